"""Presets: the shipped files check out, and bad files fail naming the file, key and values."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from streamdit_live.controls import Controls, Mode
from streamdit_live.presets import (
    PresetError,
    PresetLibrary,
    check_needs,
    load_preset,
    shipped_dir,
    to_toml,
    user_dir,
)


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_presets_all_load_and_cover_the_required_looks():
    library = PresetLibrary([("shipped", shipped_dir())])
    presets = library.all()
    assert len(presets) >= 6
    assert all(not isinstance(p, PresetError) for p in presets), presets
    by_name = {p.name: p for p in presets}
    assert by_name["realtime"].values["mode"] is Mode.VIDEO  # the low-latency v2v preset
    assert by_name["realtime"].values["chunk_size"] == 1
    assert by_name["text-stream"].values["mode"] is Mode.TEXT
    for preset in presets:
        assert preset.description, f"{preset.name} needs a description"


def test_user_presets_override_shipped_ones(tmp_path):
    shipped, user = tmp_path / "shipped", tmp_path / "user"
    shipped.mkdir()
    user.mkdir()
    write(shipped, "look", 'strength = 0.2\nprompt = "a"\n')
    write(shipped, "other", "seed = 1\n")
    write(user, "look", "strength = 0.9\n")
    library = PresetLibrary([("shipped", shipped), ("user", user)])
    assert library.names() == ["look", "other"]
    look = library.get("look")
    assert (look.origin, dict(look.values)) == ("user", {"strength": 0.9})
    applied = look.apply(Controls())
    assert applied.strength == 0.9 and applied.prompt == Controls().prompt


def test_user_dir_is_under_the_platform_config_dir():
    assert user_dir().parts[-2:] == ("streamdit-live", "presets")


def test_unknown_key_names_file_key_and_allowed_keys(tmp_path):
    path = write(tmp_path, "typo", "strenght = 0.5\n")
    with pytest.raises(PresetError) as info:
        load_preset(path)
    message = str(info.value)
    assert str(path) in message and "'strenght'" in message
    assert "allowed keys are description, prompt" in message and "strength" in message


def test_bad_value_names_file_key_and_allowed_range(tmp_path):
    path = write(tmp_path, "hot", "strength = 1.5\n")
    with pytest.raises(PresetError) as info:
        load_preset(path)
    message = str(info.value)
    assert str(path) in message and "key 'strength'" in message
    assert "a number from 0 to 1, got 1.5" in message


def test_bad_choice_lists_the_choices(tmp_path):
    path = write(tmp_path, "m", 'mode = "img2img"\n')
    with pytest.raises(PresetError, match="one of video, text, got 'img2img'"):
        load_preset(path)


def test_broken_toml_and_bad_description(tmp_path):
    with pytest.raises(PresetError, match="not valid TOML"):
        load_preset(write(tmp_path, "broken", "strength = \n"))
    with pytest.raises(PresetError, match="'description' must be text"):
        load_preset(write(tmp_path, "desc", "description = 3\n"))


def test_unknown_preset_lists_the_available_ones(tmp_path):
    write(tmp_path, "alpha", "seed = 1\n")
    library = PresetLibrary([("user", tmp_path)])
    with pytest.raises(PresetError, match=r"unknown preset 'beta'; available presets: alpha"):
        library.get("beta")


def test_a_broken_file_does_not_hide_the_others(tmp_path):
    write(tmp_path, "good", "seed = 1\n")
    write(tmp_path, "bad", "seed = -5\n")
    listed = PresetLibrary([("user", tmp_path)]).all()
    assert isinstance(listed[0], PresetError) and "bad.toml" in str(listed[0])
    assert listed[1].name == "good"


def test_a_file_that_is_not_utf8_is_a_preset_error_not_a_crash(tmp_path):
    """A preset saved in Latin-1 by some editor: tomllib raises UnicodeDecodeError, which
    used to escape load_preset, so `presets list` failed as a whole."""
    write(tmp_path, "good", "seed = 1\n")
    (tmp_path / "latin.toml").write_bytes('prompt = "caf\u00e9"\n'.encode("latin-1"))
    listed = PresetLibrary([("user", tmp_path)]).all()
    assert isinstance(listed[1], PresetError) and "latin.toml" in str(listed[1])
    assert "UTF-8" in str(listed[1]) and listed[0].name == "good"


def test_a_preset_can_be_given_as_a_path(tmp_path):
    path = write(tmp_path, "mine", 'mode = "text"\n')
    preset = PresetLibrary([]).get(str(path))
    assert preset.values == {"mode": Mode.TEXT}
    # ...but not over OSC, where any sender on the network could name any file.
    with pytest.raises(PresetError, match="unknown preset"):
        PresetLibrary([]).get(str(path), allow_path=False)


def test_to_toml_round_trips(tmp_path):
    values = Controls().replace({"prompt": 'a "quoted" prompt, ünïcode'}).to_dict()
    path = tmp_path / "round.toml"
    path.write_text(to_toml(values, "described"), encoding="utf-8")
    preset = load_preset(path)
    assert preset.description == "described"
    assert preset.apply(Controls()).to_dict() == values


def _shipped(downloaded: bool):
    """The shipped presets that run downloaded weights (`downloaded`), or the others."""
    presets = PresetLibrary([("shipped", shipped_dir())]).all()
    return [p for p in presets if bool(p.weights) is downloaded]


def test_shipped_presets_fit_the_model_they_name():
    """Chunking and size are checked against the model, which the schema alone cannot do."""
    import torch

    from streamdit_live.engine import build_models, check_fits

    built = {}
    for preset in _shipped(downloaded=False):
        controls = preset.apply(Controls())
        if controls.model not in built:
            built[controls.model] = build_models(controls.model, torch.device("cpu"))
        check_fits(controls, built[controls.model])


# The looks the shipped model was trained on (training/looks.py); video prompts name one.
LOOKS = {
    "a pencil sketch",
    "an old sepia photograph",
    "a blue neon glow",
    "a thermal camera image",
    "a comic book drawing",
    "a watercolor painting",
    "a pixel art image",
    "a black and white film",
}
# Text-mode prompts are SyntheticScenes captions: one shape, moving, on a background.
SCENE = re.compile(
    r"^an? (spinning |pulsing )?\w+ (circle|square|triangle|ring|star|cross|diamond) moving "
    r"(left|right|up|down) on a (black|gradient|noise texture|checkerboard|grid) background$"
)


def test_shipped_presets_run_the_shipped_model_with_prompts_it_knows():
    assert Controls().model == "cpu" and Controls().mode is Mode.VIDEO
    assert Controls().prompt == "a blue neon glow"  # `make run` with no preset
    for preset in _shipped(downloaded=False):
        controls = preset.apply(Controls())
        assert controls.model == "cpu", preset.name
        assert not re.search(r"\d+(\.\d+)? ?(fps|ms|s of latency)", preset.description)
        named = [preset.values[k] for k in ("prompt", "prompt_a", "prompt_b") if k in preset.values]
        if controls.mode is Mode.VIDEO:
            assert all(p in LOOKS for p in [*named, controls.prompt]), preset.name
        else:
            assert named and all(SCENE.match(p) for p in named), (preset.name, named)


def test_shipped_presets_run_at_sizes_the_shipped_bundle_knows():
    """Only where this checkout has the shipped bundle: a preset at a size it was neither
    trained nor evaluated at would be refused when it starts."""
    import model
    from model.bundle import read_bundle_info
    from streamdit_live.controls import Size

    path = Path(model.__file__).parent / "weights" / "streamdit-cpu.safetensors"
    if not path.is_file():
        pytest.skip(f"{path} is not in this checkout")
    sizes = {Size(w, h) for w, h in read_bundle_info(path).sizes}
    for preset in _shipped(downloaded=False):
        controls = preset.apply(Controls())
        assert controls.size in sizes, (preset.name, controls.size, sizes)


# --- presets for downloaded Wan2.1-architecture models --------------------------------------


def test_the_gpu_presets_run_downloaded_wan_models_at_their_trained_sizes():
    """Every shipped preset for downloaded weights needs a GPU, names a download, runs at the
    size the model was trained at with a chunking its 21-frame buffer divides, and says how
    many steps it takes compared with the model's own sampler."""
    from streamdit_live.download import CATALOG

    wan = {p.name: p for p in _shipped(downloaded=True)}
    assert {p.weights for p in wan.values()} == {"wan2.1-t2v-1.3b", "skyreels-v2-df-1.3b"}
    trained = {"wan2.1-t2v-1.3b": "832x480", "skyreels-v2-df-1.3b": "960x544"}
    for preset in wan.values():
        controls = preset.apply(Controls())
        assert preset.device == "cuda" and preset.weights in CATALOG
        assert str(controls.size) == trained[preset.weights], preset.name
        assert 21 % controls.chunk_size == 0 and controls.size.width % 16 == 0
        calls = 21 // controls.chunk_size * controls.steps  # model calls each frame sees
        assert f"{calls} model calls" in preset.description, preset.name
        assert "not distilled" in preset.description.lower() and "real time" in preset.description
        assert f"streamdit-live download {preset.weights}" in preset.description
        assert not re.search(r"\d+(\.\d+)? ?(fps|ms|s of latency)", preset.description)
    assert "noise level per frame" in wan["skyreels-df"].description


def test_a_gpu_preset_on_a_cpu_is_one_sentence():
    preset = load_preset(shipped_dir() / "wan-t2v.toml")
    with pytest.raises(PresetError) as err:
        check_needs(preset, "cpu", weights_given=False, random_weights=False, found=None)
    msg = str(err.value)
    assert msg.startswith("the preset wan-t2v needs a CUDA GPU and this run is on the cpu")
    assert msg.endswith(".") and msg.count(". ") == 0


def test_a_gpu_preset_without_its_download_points_at_the_download_command(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    preset = load_preset(shipped_dir() / "skyreels-df.toml")
    with pytest.raises(PresetError) as err:
        check_needs(preset, "cuda", weights_given=False, random_weights=False, found=None)
    msg = str(err.value)
    assert (
        "streamdit-live download skyreels-v2-df-1.3b` and `streamdit-live download taew2_1`" in msg
    )
    assert str(tmp_path) in msg and msg.count(". ") == 0
    folder = tmp_path / "sky"
    assert check_needs(preset, "cuda:0", False, False, [folder]) == (folder,)
    assert check_needs(preset, "cuda", True, False, None) == ()  # --weights given: those
    with pytest.raises(PresetError, match="drop --random-weights"):
        check_needs(preset, "cuda", False, True, None)


def test_the_cli_refuses_a_gpu_preset_on_a_cpu_before_loading(capsys):
    from streamdit_live.cli import main

    code = main(["run", "--preset", "wan-t2v", "--device", "cpu", "--out", "file:x.mp4"])
    err = capsys.readouterr().err
    assert code == 2 and "needs a CUDA GPU" in err and err.count("\n") == 1


def test_needs_keys_are_checked(tmp_path):
    with pytest.raises(PresetError, match="key 'weights' must be a `streamdit-live download` name"):
        load_preset(write(tmp_path, "w", 'weights = "wan9"\n'))
    with pytest.raises(PresetError, match="key 'device' can only be 'cuda', got 'tpu'"):
        load_preset(write(tmp_path, "d", 'device = "tpu"\n'))
    plain = load_preset(write(tmp_path, "p", "seed = 1\n"))
    assert (plain.weights, plain.device, plain.describe_needs()) == ("", "", "")


def test_a_downloaded_model_becomes_the_weights_of_its_preset(monkeypatch, tmp_path):
    from argparse import Namespace

    from streamdit_live.download import target_dir
    from streamdit_live.presets import preset_weights

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    library = PresetLibrary([("shipped", shipped_dir())])
    args = Namespace(device="cuda", weights=[], random_weights=False)
    with pytest.raises(PresetError, match="whose weights are not in"):
        preset_weights("wan-t2v", library, args)
    folder = target_dir("wan2.1-t2v-1.3b")
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    assert preset_weights("wan-t2v", library, args) == (folder,)
    mine = tmp_path / "mine"
    assert preset_weights("wan-t2v", library, Namespace(**{**vars(args), "weights": [mine]})) == (
        mine,
    )
    assert preset_weights("realtime", library, args) == ()  # a cpu preset needs nothing
