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
