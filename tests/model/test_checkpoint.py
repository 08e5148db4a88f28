import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from model import CONFIGS, CheckpointError, StreamDiT, load_streamdit, save_checkpoint
from model.checkpoint import read_metadata

TINY = CONFIGS["tiny"]


def _net():
    torch.manual_seed(0)
    net = StreamDiT(TINY)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.1)
    return net.eval()


def test_round_trip_gives_the_same_network(tmp_path):
    net = _net()
    path = save_checkpoint(tmp_path / "tiny.safetensors", net, TINY, "streamdit", {"step": "7"})
    meta = read_metadata(path)
    assert meta["kind"] == "streamdit" and meta["step"] == "7"
    loaded = load_streamdit(path)
    assert loaded.cfg == TINY
    x, t, text = torch.randn(1, 4, 2, 8, 8), torch.rand(1, 2), torch.randn(1, 3, 384)
    with torch.no_grad():
        assert torch.equal(net(x, t, text), loaded(x, t, text))


def test_tensors_that_do_not_fit_the_config_name_the_first_tensor(tmp_path):
    net = _net()
    other = TINY.replace(dim=32, heads=2)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    path = tmp_path / "bad.safetensors"
    save_file(
        state, str(path), metadata={"kind": "streamdit", "config": json.dumps(other.to_dict())}
    )
    with pytest.raises(CheckpointError, match=r"tensor 'patch_embedding.weight' has shape"):
        load_streamdit(path)


def test_missing_and_extra_tensors_and_wrong_kind(tmp_path):
    net = _net()
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    meta = {"kind": "streamdit", "config": json.dumps(TINY.to_dict())}
    missing = dict(state)
    missing.pop("head.head.bias")
    save_file(missing, str(tmp_path / "m.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="lacks tensor 'head.head.bias'"):
        load_streamdit(tmp_path / "m.safetensors")
    save_file({**state, "stray": torch.zeros(1)}, str(tmp_path / "e.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="'stray'"):
        load_streamdit(tmp_path / "e.safetensors")
    save_file(state, str(tmp_path / "k.safetensors"), metadata={**meta, "kind": "autoencoder"})
    with pytest.raises(CheckpointError, match="'autoencoder' checkpoint, expected 'streamdit'"):
        load_streamdit(tmp_path / "k.safetensors")


def test_never_unpickles(tmp_path):
    class Boom:
        def __reduce__(self):
            return (pytest.fail, ("unpickled!",))

    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint"):
        load_streamdit(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_streamdit(tmp_path / "nope.safetensors")


def test_a_tiny_file_claiming_the_4b_config_is_refused_fast_without_allocating(
    tmp_path, monkeypatch
):
    """The header's shapes are compared with the config built on `meta`: the 4b model
    (~4B parameters, ~16 GB in float32) is never built for real, so refusing takes
    milliseconds and the process does not grow."""
    import resource
    import time

    import model.dit

    path = tmp_path / "forged.safetensors"
    state = {k: v.contiguous() for k, v in _net().state_dict().items()}
    save_file(
        state,
        str(path),
        metadata={"kind": "streamdit", "config": json.dumps(CONFIGS["4b"].to_dict())},
    )
    devices = []
    real_init = model.dit.StreamDiT.__init__

    def spy(self, cfg):
        devices.append(torch.get_default_device().type)
        assert devices[-1] == "meta", "a StreamDiT was built for real before the check"
        real_init(self, cfg)

    monkeypatch.setattr(model.dit.StreamDiT, "__init__", spy)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"'patch_embedding.weight' has shape \(64, 4"):
        load_streamdit(path)
    elapsed = time.perf_counter() - start
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert devices == ["meta"]
    assert elapsed < 2.0, f"refusing the forged file took {elapsed:.2f} s"
    assert grown_mib < 200, f"the process grew by {grown_mib:.0f} MiB"


def test_a_header_whose_tensors_the_file_does_not_hold_is_refused(tmp_path):
    """A header claiming 4b-sized tensors over a few bytes, and a good file cut short:
    safetensors' own check that the bytes cover the header, in one sentence."""
    import struct

    big = CONFIGS["4b"]
    header = {
        "__metadata__": {"kind": "streamdit", "config": json.dumps(big.to_dict())},
        "patch_embedding.weight": {
            "dtype": "F32",
            "shape": [big.dim, big.latent_channels, 1, 2, 2],
            "data_offsets": [0, big.dim * big.latent_channels * 4 * 4],
        },
    }
    raw = json.dumps(header).encode()
    forged = tmp_path / "forged.safetensors"
    forged.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(64))
    with pytest.raises(CheckpointError, match="is truncated"):
        load_streamdit(forged)

    good = save_checkpoint(tmp_path / "good.safetensors", _net(), TINY, "streamdit")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint or is truncated"):
        load_streamdit(cut)


def test_float16_weights_load_as_float32_and_integer_weights_are_refused(tmp_path):
    net = _net()
    state = {k: v.half().contiguous() for k, v in net.state_dict().items()}
    meta = {"kind": "streamdit", "config": json.dumps(TINY.to_dict())}
    save_file(state, str(tmp_path / "half.safetensors"), metadata=meta)
    loaded = load_streamdit(tmp_path / "half.safetensors")
    for name, t in net.state_dict().items():
        got = loaded.state_dict()[name]
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, t, atol=1e-3, rtol=1e-3)
    assert all(p.requires_grad for p in loaded.parameters())  # a normal module, not frozen

    state["head.head.bias"] = state["head.head.bias"].to(torch.int32)
    save_file(state, str(tmp_path / "int.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="'head.head.bias' is stored as I32"):
        load_streamdit(tmp_path / "int.safetensors")


def test_a_config_that_does_not_parse_is_one_sentence(tmp_path):
    state = {k: v.contiguous() for k, v in _net().state_dict().items()}
    bad = {**TINY.to_dict(), "dim": 63}  # not divisible by the heads
    save_file(
        state,
        str(tmp_path / "c.safetensors"),
        metadata={"kind": "streamdit", "config": json.dumps(bad)},
    )
    with pytest.raises(CheckpointError, match="has an invalid 'config'"):
        load_streamdit(tmp_path / "c.safetensors")


def test_digest_names_the_weights_in_memory_and_on_disk_alike(tmp_path):
    from model.checkpoint import file_digest, state_digest

    net = _net()
    path = save_checkpoint(tmp_path / "a.safetensors", net, TINY, "streamdit", {"step": "1"})
    again = save_checkpoint(tmp_path / "b.safetensors", net, TINY, "streamdit", {"step": "2"})
    assert state_digest(net) == file_digest(path) == file_digest(again)  # metadata aside
    with torch.no_grad():
        net.head.head.bias[0] += 1e-3
    assert state_digest(net) != file_digest(path)
