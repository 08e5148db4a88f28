"""--weights FOLDER for a Wan download: a tiny random diffusers Wan transformer, umT5 and TAEHV
laid out as a -Diffusers folder load through build_models; a missing part or too little
memory is one sentence, before anything is loaded."""

from __future__ import annotations

import contextlib
import functools
import json
import re
import shutil
import threading
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip(
    "diffusers", reason="the Wan tests need diffusers (the [wan] extra)"
)
pytest.importorskip("transformers", reason="umT5 needs transformers (the [wan] extra)")

from wan_parts import TEXT_DIM, random_wan, save_taehv, save_text_parts  # noqa: E402

from model.bundle import UMT5, TextEncoderId, minilm_id, save_bundle  # noqa: E402
from model.config import Prediction, TimeInput  # noqa: E402
from model.taehv import TAEHV  # noqa: E402
from model.text import TextEncoder  # noqa: E402
from streamdit_live.cli import main  # noqa: E402
from streamdit_live.controls import Size  # noqa: E402
from streamdit_live.models import build_models  # noqa: E402
from streamdit_live.wan_weights import WanFolderError, estimate_memory, find_parts  # noqa: E402

CPU = torch.device("cpu")
LATENT = dict(in_channels=16, out_channels=16)  # TAEHV's latent channels
WORDS = ("a", "red", "fox", "in", "snow")  # the prompt below, one token a word


def _wan(cls=None) -> torch.nn.Module:
    """The tiny random transformer (the same weights on every call: a fixed seed)."""
    return random_wan(cls or diffusers.WanTransformer3DModel, **LATENT)


@pytest.fixture(scope="module")
def download(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Wan2.1 -Diffusers download as the hub lays it out, with taew2_1.pth put in it."""
    root = tmp_path_factory.mktemp("Wan2.1-T2V-1.3B-Diffusers")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    _wan().save_pretrained(root / "transformer")
    save_text_parts(root, WORDS)
    save_taehv(root / "taew2_1.pth")
    return root


@pytest.fixture(autouse=True)
def no_user_downloads(monkeypatch, tmp_path):
    """The user's own downloads (XDG data dir) stay out of the tests."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))


def _copy(download: Path, tmp_path: Path, drop: tuple[str, ...] = ()) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(download, copy)
    for rel in drop:
        target = copy / rel
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    return copy


def _plenty(device: torch.device) -> int:
    return 1 << 40


def test_a_download_folder_builds_models_that_step(download: Path):
    models = build_models("cpu", CPU, [download], available_memory=_plenty)
    cfg = models.config
    assert models.trained and models.wan is not None and models.path == download
    assert models.name == "wan2.1-d16" and models.flow_shift == 5.0
    assert (cfg.time_input, cfg.prediction) == (TimeInput.NOISE_AT_ONE, Prediction.NOISE_MINUS_DATA)
    assert isinstance(models.ae, TAEHV) and models.ae.cfg.decode_trim == 3
    assert models.text.identity.name == UMT5 and models.text.max_length == cfg.text_len == 512
    assert models.default_size == Size(832, 480)
    assert "Wan2.1-T2V-1.3B-Diffusers" in models.describe_weights()
    # One model call through the built DiT with the built text encoder, per-frame times.
    emb = models.text.encode("a red fox in snow")
    assert emb.states.shape == (1, 512, TEXT_DIM)
    dt = models.dit.patch_embedding.weight.dtype  # bf16 on a CPU with native bf16
    x = torch.randn(1, 16, 3, 8, 8, dtype=dt)
    with torch.no_grad():
        v = models.dit(x, torch.tensor([[0.2, 0.5, 0.9]]), emb.states.to(dt), emb.mask)
    assert v.shape == x.shape and torch.isfinite(v).all()
    frames = models.ae.decode(v.float())
    assert frames.shape == (1, 3, 4 * 3 - 3, 64, 64)


def test_the_imported_dit_equals_diffusers_wan(download: Path):
    """The in-memory conversion is the importer's: net(x, t, c) == -wan(x, 1000 (1 - t), c)."""
    wan = _wan()
    models = build_models("cpu", CPU, [download], available_memory=_plenty, dtype=torch.float32)
    g = torch.Generator().manual_seed(1)
    x, text, t = torch.randn(2, 16, 3, 8, 8, generator=g), torch.randn(2, 5, 16), torch.rand(2)
    with torch.no_grad():
        ours, theirs = models.dit(x, t, text), wan(x, 1000 * (1 - t), text).sample
    assert (ours + theirs).abs().max() < 1e-4 and theirs.abs().max() > 0.5


def test_the_taehv_file_can_be_given_as_a_second_path(download: Path, tmp_path: Path):
    folder = _copy(download, tmp_path, drop=("taew2_1.pth",))
    elsewhere = tmp_path / "taew2_1.pth"
    shutil.copy(download / "taew2_1.pth", elsewhere)
    assert find_parts([folder, elsewhere]).taehv == elsewhere
    models = build_models("cpu", CPU, [folder, elsewhere], available_memory=_plenty)
    assert models.wan is not None and models.wan.taehv == elsewhere


def test_the_taehv_file_is_found_where_download_puts_it(download: Path, tmp_path: Path):
    from streamdit_live.download import target_dir

    folder = _copy(download, tmp_path, drop=("taew2_1.pth",))
    target_dir("taew2_1").mkdir(parents=True)
    shutil.copy(download / "taew2_1.pth", target_dir("taew2_1") / "taew2_1.pth")
    assert find_parts([folder]).taehv == target_dir("taew2_1") / "taew2_1.pth"


def _one_sentence(message: str) -> None:
    assert message.endswith(".") and ". " not in message.replace("e.g. ", ""), message


def test_a_missing_taehv_is_one_sentence_naming_it(download: Path, tmp_path: Path):
    folder = _copy(download, tmp_path, drop=("taew2_1.pth",))
    with pytest.raises(WanFolderError) as err:
        build_models("cpu", CPU, [folder], available_memory=_plenty)
    msg = str(err.value)
    assert msg.startswith(f"{folder} has no TAEHV decoder: download taew2_1.safetensors")
    assert "streamdit-live download taew2_1" in msg
    _one_sentence(msg)


@pytest.mark.parametrize(
    ("drop", "named"),
    [
        (("text_encoder",), "the text_encoder/ folder"),
        (("tokenizer",), "the tokenizer (tokenizer/tokenizer.json"),
        (("transformer/config.json",), "transformer/config.json"),
        (("transformer/diffusion_pytorch_model.safetensors",), "the weights transformer/"),
        (("model_index.json", "taew2_1.pth"), "model_index.json and a TAEHV decoder"),
    ],
)
def test_a_missing_part_is_one_sentence_before_anything_loads(
    download: Path, tmp_path: Path, monkeypatch, drop, named
):
    folder = _copy(download, tmp_path, drop=drop)
    if drop == ("model_index.json", "taew2_1.pth"):
        assert (folder / "transformer").is_dir()  # still a Wan folder by its transformer/
    monkeypatch.setattr(
        "streamdit_live.wan_weights.load_dit", lambda *a, **k: pytest.fail("loaded a tensor")
    )
    with pytest.raises(WanFolderError) as err:
        build_models("cpu", CPU, [folder], available_memory=_plenty)
    msg = str(err.value)
    assert msg.startswith(f"{folder} lacks ") and named in msg, msg
    assert "streamdit-live download wan2.1-t2v-1.3b" in msg
    _one_sentence(msg)


def test_a_missing_shard_is_named(download: Path, tmp_path: Path):
    folder = _copy(download, tmp_path)
    shutil.rmtree(folder / "transformer")
    _wan().save_pretrained(folder / "transformer", max_shard_size="20KB")
    shards = sorted((folder / "transformer").glob("*-of-*.safetensors"))
    assert len(shards) > 1
    assert build_models("cpu", CPU, [folder], available_memory=_plenty).trained  # sharded loads
    shards[-1].unlink()
    with pytest.raises(WanFolderError, match=rf"lacks the shard transformer/{shards[-1].name}"):
        build_models("cpu", CPU, [folder], available_memory=_plenty)


def test_too_little_memory_is_refused_before_loading(download: Path, monkeypatch):
    asked = []

    def tight(device: torch.device) -> int:
        asked.append(device)
        return 1000

    monkeypatch.setattr(
        "streamdit_live.wan_weights.load_dit", lambda *a, **k: pytest.fail("loaded a tensor")
    )
    with pytest.raises(WanFolderError) as err:
        build_models("cpu", CPU, [download], available_memory=tight)
    msg = str(err.value)
    assert asked == [CPU]
    assert msg.startswith(f"{download} needs about ") and "of RAM on cpu" in msg
    assert "but only 0.0 GB is free" in msg and "DiT " in msg and "umT5 " in msg
    _one_sentence(msg)


def test_the_estimate_counts_header_parameters_in_the_run_dtype(download: Path):
    parts = find_parts([download])
    n = sum(p.numel() for p in _wan().parameters())
    f32 = estimate_memory(parts, torch.float32, torch.float32, (8, 8), latent_frames=3)
    bf16 = estimate_memory(parts, torch.bfloat16, torch.bfloat16, (8, 8), latent_frames=3)
    assert f32.dit == 4 * n and bf16.dit == 2 * n and f32.text == 2 * bf16.text > 0
    assert f32.codec > 0 and f32.total > f32.dit + f32.text
    big = estimate_memory(parts, torch.float32, torch.float32, (60, 104))
    assert big.working > f32.working  # more tokens, more working memory


def test_another_text_encoder_or_an_explicit_model_is_refused(download: Path):
    from model.bundle import BundleError

    with pytest.raises(BundleError, match="reads umT5 prompt states, but the text encoder given"):
        build_models("cpu", CPU, [download], TextEncoder(), available_memory=_plenty)
    with pytest.raises(BundleError, match=r"--model tiny was asked for but .* wan2\.1-d16 model"):
        build_models("tiny", CPU, [download], explicit_model=True, available_memory=_plenty)


def test_something_else_beside_the_folder_is_refused(download: Path, tmp_path: Path):
    other = tmp_path / "notes.txt"
    other.write_text("x")
    says = "the only other --weights it takes are its TAEHV decoder file (taew2_1.safetensors)"
    with pytest.raises(WanFolderError, match=re.escape(says)):
        find_parts([download, other])


def test_skyreels_folders_are_told_apart(download: Path, tmp_path: Path):
    if not hasattr(diffusers, "SkyReelsV2Transformer3DModel"):
        pytest.skip("this diffusers has no SkyReelsV2Transformer3DModel")
    folder = _copy(download, tmp_path, drop=("transformer",))
    _wan(diffusers.SkyReelsV2Transformer3DModel).save_pretrained(folder / "transformer")
    parts = find_parts([folder])
    assert parts.family == "skyreels-v2" and parts.sizes[0] == (960, 544)
    models = build_models("cpu", CPU, [folder], available_memory=_plenty)
    assert models.flow_shift == 8.0 and models.default_size == Size(960, 544)
    shutil.rmtree(folder / "tokenizer")
    with pytest.raises(WanFolderError, match="streamdit-live download skyreels-v2-df-1.3b"):
        find_parts([folder])


def test_a_umt5_bundle_with_another_umt5_says_so(tmp_path: Path):
    """The version mismatch for umT5 is about the folder, not a pip package."""
    from model import AE_CONFIGS, CONFIGS, StreamDiT, VideoAutoencoder
    from model.bundle import BundleError

    class OtherUMT5:
        identity = TextEncoderId(UMT5, "d16-l3-v39")
        dim = 384

    dit, ae = StreamDiT(CONFIGS["tiny"]), VideoAutoencoder(AE_CONFIGS["tiny"])
    path = save_bundle(
        tmp_path / "u.safetensors", dit, ae, text_encoder=TextEncoderId(UMT5, "d16-l2-v39"),
        trained_sizes=[(64, 64)],
    )  # fmt: skip
    with pytest.raises(BundleError) as err:
        build_models("tiny", CPU, [path], OtherUMT5())  # type: ignore[arg-type]
    msg = str(err.value)
    assert "umT5 d16-l2-v39 but the umT5 folder given is d16-l3-v39" in msg
    assert "pip install" not in msg
    _one_sentence(msg)
    assert minilm_id().name != UMT5


def test_the_cli_says_what_is_missing_and_exits_2(download: Path, tmp_path: Path, capsys):
    folder = _copy(download, tmp_path, drop=("taew2_1.pth",))
    code = main(["run", "--weights", str(folder), "--mode", "text", "--out", "file:o.mp4"])
    err = capsys.readouterr().err
    assert code == 2 and "has no TAEHV decoder" in err and err.count("\n") == 1


def _first_chunks(download: Path, settings: dict, open_source=None, n: int = 3) -> list[list]:
    """Runs the engine on the download's models, on the CPU at 64x64 with the prompt "a fox"
    and `settings` (and the source `open_source()` starts, once the models are built), until
    it has pushed `n` chunks; -> the first `n` chunks' frames."""
    from streamdit_live.controls import Controls
    from streamdit_live.engine import Engine

    pushed: list[list] = []
    done = threading.Event()

    class Out:
        def push(self, chunk):
            pushed.append(list(chunk))
            if len(pushed) >= n:
                done.set()

        def flush(self, keep_last: bool = False) -> None:
            pass

    models = build_models("cpu", CPU, [download], available_memory=_plenty)
    controls = Controls().replace({"size": "64x64", "fps": 120.0, "prompt": "a fox", **settings})
    source = open_source() if open_source else None
    guard = source if source is not None else contextlib.nullcontext()
    with guard, Engine(controls, models, Out(), source):
        assert done.wait(120), "no frames from the Wan download"
    return pushed[:n]


def test_the_engine_streams_text_to_video_from_a_download(download: Path):
    """End to end in text mode on the CPU: umT5 states into the converted DiT in the moving
    buffer, latents out through TAEHV (its first chunk 3 frames short, Wan's rule)."""
    chunks = _first_chunks(download, {"mode": "text"})
    assert [len(c) for c in chunks] == [1, 4, 4]
    assert chunks[0][0].frame.shape == (64, 64, 3)


def test_the_engine_streams_video_to_video_from_a_download(download: Path):
    """Video mode through TAEHV: its first decoded chunk is 3 frames short, and those frames
    keep the capture times of the chunk's last frames, in order."""
    from streamdit_live.sources import open_source

    demo = functools.partial(open_source, "demo", 64, 64, 120.0)
    chunks = _first_chunks(download, {"mode": "video", "strength": 0.5}, demo)
    assert [len(c) for c in chunks] == [1, 4, 4]
    captures = [f.t_capture for c in chunks for f in c]
    assert None not in captures and captures == sorted(captures)


# --- a StreamDiT export fine-tuned from the download (training/, docs/TRAINING.md) ---------

ROOT = Path(__file__).resolve().parents[2]
# training/configs/wan_finetune.toml on a CPU for two steps at 32x32 (as
# tests/training/test_wan_finetune.py runs it).
FINETUNE_ON_CPU = [
    "run.device=cpu", "run.precision=fp32", "run.threads=1", "run.progress=false",
    "run.log_every=1", "run.max_steps=2", "data.synthetic=1.0", "data.folder=0.0",
    "data.size=32", "data.crop=0", "data.workers=0", "data.max_objects=1",
    "optim.batch_size=2", "optim.warmup=0", "stages.0.lr=1e-3",
]  # fmt: skip


@pytest.fixture(scope="module")
def export(download: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`streamdit_ema.safetensors` of two fine-tuning steps from the download's transformer
    (imported by model.import_wan), its umT5 and its TAEHV, exported by training.train."""
    from model.import_wan import convert
    from training.config import load_config
    from training.train import train

    out = tmp_path_factory.mktemp("finetune")
    convert(download / "transformer", out / "wan.safetensors")
    paths = [
        f"model.init={out / 'wan.safetensors'}",
        f"text.path={download}",
        f"autoencoder.checkpoint={download / 'taew2_1.pth'}",
    ]
    config = ROOT / "training" / "configs" / "wan_finetune.toml"
    train(load_config(config, [*FINETUNE_ON_CPU, *paths, f"run.out_dir={out / 'run'}"]))
    return out / "run" / "streamdit_ema.safetensors"


def test_a_finetuned_export_runs_in_place_of_the_folders_transformer(
    download: Path, export: Path, monkeypatch
):
    from model.checkpoint import load_streamdit

    monkeypatch.setattr(
        "streamdit_live.wan_weights.load_dit", lambda *a, **k: pytest.fail("converted the folder")
    )
    models = build_models(
        "cpu", CPU, [download, export], dtype=torch.float32, available_memory=_plenty
    )
    assert models.wan is not None and models.wan.export == export and models.path == download
    assert models.name == "wan2.1-d16" and models.flow_shift == 5.0
    assert "streamdit_ema.safetensors" in models.describe_weights()
    trained = load_streamdit(export).state_dict()
    ours = models.dit.state_dict()
    assert trained.keys() == ours.keys() and all(torch.equal(ours[n], trained[n]) for n in ours)
    emb = models.text.encode("a red fox in snow")
    x = torch.randn(1, 16, 3, 8, 8)
    with torch.no_grad():
        v = models.dit(x, torch.tensor([[0.2, 0.5, 0.9]]), emb.states, emb.mask)
    assert v.shape == x.shape and torch.isfinite(v).all()
    assert models.ae.decode(v).shape == (1, 3, 4 * 3 - 3, 64, 64)


def test_the_estimate_counts_the_exports_tensors(download: Path, export: Path, tmp_path: Path):
    """The export replaces the transformer's weights: they need not be there, nor counted."""
    from streamdit_live.wan_weights import header_params

    folder = _copy(download, tmp_path, drop=("transformer/diffusion_pytorch_model.safetensors",))
    parts = find_parts([folder, export])
    assert parts.export == export and parts.taehv == folder / "taew2_1.pth"
    need = estimate_memory(parts, torch.bfloat16, torch.float32, (8, 8), latent_frames=3)
    assert need.dit == 2 * header_params(export) > 0
    assert build_models("cpu", CPU, [folder, export], available_memory=_plenty).trained


def _refused_before_loading(paths: list[Path], monkeypatch) -> str:
    for where in ("streamdit_live.wan_weights.load_dit", "streamdit_live.models.load_streamdit"):
        monkeypatch.setattr(where, lambda *a, **k: pytest.fail("loaded the DiT"))
    with pytest.raises(WanFolderError) as err:
        build_models("cpu", CPU, paths, available_memory=_plenty)
    msg = str(err.value)
    _one_sentence(msg)
    return msg


def test_an_export_of_another_umt5_is_refused_in_one_sentence(
    download: Path, export: Path, tmp_path: Path, monkeypatch
):
    folder = _copy(download, tmp_path, drop=("text_encoder", "tokenizer"))
    save_text_parts(folder, WORDS, layers=3)  # umT5 d16-l3-v35; the export's is d16-l2-v35
    msg = _refused_before_loading([folder, export], monkeypatch)
    assert msg.startswith(f"{export} was trained with umT5 d16-l2-v35 but {folder}'s "), msg
    assert "text_encoder/ is umT5 d16-l3-v35" in msg


def test_an_export_of_another_taehv_is_refused_in_one_sentence(
    download: Path, export: Path, tmp_path: Path, monkeypatch
):
    other = save_taehv(tmp_path / "taew2_1.pth", seed=1)
    msg = _refused_before_loading([download, export, other], monkeypatch)
    assert msg.startswith(f"{export} was trained with a TAEHV of latent digest "), msg
    assert f"but {other} has " in msg and "give the TAEHV file it was trained with" in msg


def test_the_cli_refuses_a_mismatched_export_and_exits_2(
    download: Path, export: Path, tmp_path: Path, capsys
):
    other = save_taehv(tmp_path / "taew2_1.pth", seed=1)
    args = ["run", "--mode", "text", "--out", "file:o.mp4"]
    for path in (download, export, other):
        args += ["--weights", str(path)]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and "was trained with a TAEHV of latent digest" in err, err
    assert err.count("\n") == 1


def test_an_export_alone_or_two_exports_are_refused(download: Path, export: Path, tmp_path):
    from model.bundle import BundleError

    with pytest.raises(BundleError, match="give that folder as another --weights") as err:
        build_models("cpu", CPU, [export], available_memory=_plenty)
    _one_sentence(str(err.value))
    with pytest.raises(WanFolderError, match="and one StreamDiT checkpoint trained from it, not"):
        find_parts([download, export, shutil.copy(export, tmp_path / "second.safetensors")])
