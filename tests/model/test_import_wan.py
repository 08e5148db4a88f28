"""model.import_wan against diffusers' own Wan2.1 and SkyReels-V2 transformers (tiny, random).

The contract: after import, net(x, t, text) == -wan(x, timestep=1000 (1 - t), text) in fp32,
for uniform and per-frame t, whichever key layout or file arrangement the weights came in.
"""

import json
import re

import pytest
import torch
from safetensors.torch import save_file
from wan_parts import TEXT_DIM, random_wan

from model.checkpoint import load_streamdit, read_metadata
from model.config import Prediction, TimeInput
from model.import_wan import KeyLayout, WanImportError, convert, main

diffusers = pytest.importorskip(
    "diffusers", reason="the Wan tests need diffusers (the [wan] extra)"
)

TOL = 1e-4
GRID = (2, 4, 3, 8, 8)  # B, C, F, H, W: 3 x 4 x 4 tokens


@pytest.fixture(scope="module")
def wan():
    return random_wan(diffusers.WanTransformer3DModel)


@pytest.fixture(scope="module")
def skyreels():
    if not hasattr(diffusers, "SkyReelsV2Transformer3DModel"):
        pytest.skip("this diffusers has no SkyReelsV2Transformer3DModel")
    return random_wan(diffusers.SkyReelsV2Transformer3DModel)


def _inputs(batch=GRID[0], seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *GRID[1:], generator=g)
    text = torch.randn(batch, 7, TEXT_DIM, generator=g)
    t_uniform = torch.rand(batch, generator=g)
    t_frames = torch.rand(batch, GRID[2], generator=g)  # a different time per frame
    return x, text, t_uniform, t_frames


def _convert(model, tmp_path, **kwargs):
    model.save_pretrained(tmp_path / "src", **kwargs)
    out = tmp_path / "net.safetensors"
    convert(tmp_path / "src", out)
    return load_streamdit(out), out


def _per_token(t_frames):
    """Diffusers' Wan takes one timestep per token (Wan2.2's form): each frame's, repeated."""
    tokens_per_frame = (GRID[3] // 2) * (GRID[4] // 2)
    return (1000 * (1 - t_frames)).repeat_interleave(tokens_per_frame, dim=1)


def _assert_negated(ours, theirs):
    err = (ours + theirs).abs().max().item()
    assert err < TOL, f"max |net + wan| = {err:.2e}"
    assert theirs.abs().max() > 0.5  # a real signal, not two zero maps


def test_diffusers_wan_is_reproduced_for_uniform_and_per_frame_time(wan, tmp_path):
    net, path = _convert(wan, tmp_path)
    x, text, t_uniform, t_frames = _inputs()
    with torch.no_grad():
        _assert_negated(net(x, t_uniform, text), wan(x, 1000 * (1 - t_uniform), text).sample)
        _assert_negated(net(x, t_frames, text), wan(x, _per_token(t_frames), text).sample)
    cfg = net.cfg
    assert (cfg.time_input, cfg.prediction) == (TimeInput.NOISE_AT_ONE, Prediction.NOISE_MINUS_DATA)
    assert cfg.head_table and cfg.adaln_single and cfg.sigma_min == 0.0
    origin = json.loads(read_metadata(path)["origin"])
    assert origin["key_layout"] == "diffusers"
    assert origin["source_class"] == "WanTransformer3DModel"


def test_skyreels_diffusion_forcing_per_frame_time(skyreels, tmp_path):
    net, _ = _convert(skyreels, tmp_path)
    x, text, t_uniform, t_frames = _inputs()
    with torch.no_grad():
        theirs = skyreels(x, 1000 * (1 - t_frames), text, enable_diffusion_forcing=True).sample
        _assert_negated(net(x, t_frames, text), theirs)
        _assert_negated(net(x, t_uniform, text), skyreels(x, 1000 * (1 - t_uniform), text).sample)


@pytest.mark.parametrize("fps", [16, 24])
def test_skyreels_frame_rate_embedding_is_folded_in(tmp_path, fps):
    if not hasattr(diffusers, "SkyReelsV2Transformer3DModel"):
        pytest.skip("this diffusers has no SkyReelsV2Transformer3DModel")
    model = random_wan(diffusers.SkyReelsV2Transformer3DModel, inject_sample_info=True)
    model.save_pretrained(tmp_path / "src")
    convert(tmp_path / "src", tmp_path / "net.safetensors", fps=fps)
    net = load_streamdit(tmp_path / "net.safetensors")
    x, text, _, t_frames = _inputs(batch=1)  # diffusers repeats the fps term per frame: B = 1
    flag = [0 if fps == 16 else 1]  # SkyReels-V2's encoding of the frame rate
    with torch.no_grad():
        theirs = model(
            x, 1000 * (1 - t_frames), text, enable_diffusion_forcing=True, fps=flag
        ).sample
        _assert_negated(net(x, t_frames, text), theirs)


# The original Wan2.1 code's names, written here independently of the importer's rules.
_TO_ORIGINAL = [
    (r"condition_embedder\.time_embedder\.linear_1", "time_embedding.0"),
    (r"condition_embedder\.time_embedder\.linear_2", "time_embedding.2"),
    (r"condition_embedder\.time_proj", "time_projection.1"),
    (r"condition_embedder\.text_embedder\.linear_1", "text_embedding.0"),
    (r"condition_embedder\.text_embedder\.linear_2", "text_embedding.2"),
    (r"attn1\.", "self_attn."),
    (r"attn2\.", "cross_attn."),
    (r"to_out\.0", "o"),
    (r"to_([qkv])\b", r"\1"),
    (r"\.norm2\.", ".norm3."),
    (r"ffn\.net\.0\.proj", "ffn.0"),
    (r"ffn\.net\.2", "ffn.2"),
    (r"^(blocks\.\d+\.)scale_shift_table", r"\1modulation"),
    (r"^scale_shift_table", "head.modulation"),
    (r"^proj_out", "head.head"),
]


def _original_state(model):
    state = {}
    for name, tensor in model.state_dict().items():
        for pattern, repl in _TO_ORIGINAL:
            name = re.sub(pattern, repl, name)
        state[name] = tensor.contiguous()
    return state


@pytest.mark.parametrize("prefix", ["", "model."])
def test_original_key_layout_single_file(wan, tmp_path, prefix):
    state = _original_state(wan)
    assert "blocks.1.self_attn.norm_q.weight" in state and "head.modulation" in state
    src = tmp_path / "wan.safetensors"
    save_file({prefix + k: v for k, v in state.items()}, str(src))
    result = convert(src, tmp_path / "net.safetensors", heads=2)
    assert result.layout is KeyLayout.ORIGINAL
    net = load_streamdit(result.path)
    x, text, _, t_frames = _inputs()
    with torch.no_grad():
        _assert_negated(net(x, t_frames, text), wan(x, _per_token(t_frames), text).sample)


def test_original_layout_sharded_with_its_config(wan, tmp_path):
    """A folder as the Wan2.1 repository ships it: config.json (num_heads) and shards."""
    state = _original_state(wan)
    names = sorted(state)
    shards = {"part-1.safetensors": names[::2], "part-2.safetensors": names[1::2]}
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(tmp_path / file))
    index = {"weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "_class_name": "WanModel",
                "model_type": "t2v",
                "dim": 16,
                "num_heads": 2,
                "eps": 1e-6,
                "text_len": 512,
            }
        )  # fmt: skip
    )
    result = convert(tmp_path, tmp_path / "out" / "net.safetensors")
    assert result.config.heads == 2 and result.config.text_len == 512
    net = load_streamdit(result.path)
    x, text, t_uniform, _ = _inputs()
    with torch.no_grad():
        _assert_negated(net(x, t_uniform, text), wan(x, 1000 * (1 - t_uniform), text).sample)


def test_diffusers_sharded_pipeline_folder(wan, tmp_path):
    """A diffusers repo folder: the transformer in transformer/, sharded with an index."""
    wan.save_pretrained(tmp_path / "repo" / "transformer", max_shard_size="20KB")
    assert list((tmp_path / "repo" / "transformer").glob("*.index.json"))
    result = convert(tmp_path / "repo", tmp_path / "net.safetensors")
    assert result.layout is KeyLayout.DIFFUSERS and result.config.depth == 2
    net = load_streamdit(result.path)
    x, text, t_uniform, _ = _inputs()
    with torch.no_grad():
        _assert_negated(net(x, t_uniform, text), wan(x, 1000 * (1 - t_uniform), text).sample)


def test_cli_converts_and_reports(wan, tmp_path, capsys):
    wan.save_pretrained(tmp_path / "src")
    assert main([str(tmp_path / "src"), str(tmp_path / "net.safetensors")]) == 0
    assert "2 blocks, width 16, 2 heads, from the diffusers layout" in capsys.readouterr().out


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: _write(p / "x.txt", b"hello"), "neither a folder"),
        (lambda p: _write(p / "x.safetensors", b"garbage"), "not a readable safetensors"),
        (
            lambda p: _save(p / "x.safetensors", {"blocks.0.attn.qkv.weight": torch.zeros(2)}),
            "neither the original",
        ),
        (lambda p: p, "no .safetensors weights"),
    ],
    ids=["missing", "unknown-file", "damaged", "unknown-layout", "empty-folder"],
)
def test_cli_errors_are_one_sentence_and_exit_2(tmp_path, capsys, make, message):
    src = make(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main([str(src), str(tmp_path / "out.safetensors")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out.safetensors").exists()


def test_image_to_video_tensors_are_refused(wan, tmp_path):
    state = _original_state(wan)
    state["img_emb.proj.1.weight"] = torch.zeros(4, 4)
    save_file(state, str(tmp_path / "i2v.safetensors"))
    with pytest.raises(WanImportError, match="image-to-video"):
        convert(tmp_path / "i2v.safetensors", tmp_path / "net.safetensors", heads=2)


def _write(path, data):
    path.write_bytes(data)
    return path


def _save(path, tensors):
    save_file(tensors, str(path))
    return path
