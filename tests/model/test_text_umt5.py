"""model/text_umt5.py: umT5 from a local folder gives Wan's prompt states, cached and blendable.

The model is a tiny random `UMT5EncoderModel` and the tokenizer a tiny Unigram one (the shape
of umT5's: Metaspace pieces, a closing </s>), both saved with save_pretrained in a tmp folder
by tests/wan_parts.py.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="the umT5 encoder needs transformers (the [wan] extra)")

from wan_parts import WORDS, save_text_parts  # noqa: E402

from model.bundle import MINILM, UMT5, TextEncoderId, text_encoder_id  # noqa: E402
from model.text import BlendMode, TextEncoderProtocol, blend  # noqa: E402
from model.text_umt5 import UMT5TextEncoder, clean_prompt, resolve_folders  # noqa: E402

L = 12  # the padded length (Wan's is 512)


@pytest.fixture(scope="module")
def download(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A -Diffusers download's text parts: text_encoder/ and tokenizer/ (2 layers, 39 pieces:
    the prompts below are whole WORDS, one token each)."""
    return save_text_parts(tmp_path_factory.mktemp("wan-diffusers"), WORDS, layers=2)


@pytest.fixture(scope="module")
def encoder(download: Path) -> UMT5TextEncoder:
    return UMT5TextEncoder(download, max_length=L, cache_size=8).load()


def _wan_reference(download: Path, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Wan's recipe, straight from transformers: pad to L, encode with the mask, keep each
    prompt's tokens, zeros after them. -> (states (B, L, D), prompt lengths (B,))."""
    from transformers import AutoTokenizer, UMT5EncoderModel

    tok = AutoTokenizer.from_pretrained(download / "tokenizer", local_files_only=True)
    model = UMT5EncoderModel.from_pretrained(download / "text_encoder", local_files_only=True)
    ids = tok(prompts, padding="max_length", max_length=L, truncation=True, return_tensors="pt")
    lens = ids["attention_mask"].sum(dim=1)
    with torch.no_grad():
        hidden = model(ids["input_ids"], ids["attention_mask"]).last_hidden_state
    keep = torch.arange(L)[None, :] < lens[:, None]
    return hidden * keep[..., None], lens


def test_states_are_wans_prompt_states_then_zeros(download: Path, encoder: UMT5TextEncoder):
    assert isinstance(encoder, TextEncoderProtocol)
    prompts = ["a red circle", "a slow pan over a blue lake"]
    e = encoder.encode(prompts)
    assert e.states.shape == (2, L, 16) and e.states.dtype == torch.float32
    assert encoder.dim == 16 and encoder.max_length == L
    want, lens = _wan_reference(download, prompts)
    assert lens.tolist() == [4, 8]  # "▁a ▁red ▁circle </s>": the closing </s> is a token
    torch.testing.assert_close(e.states, want, atol=1e-5, rtol=1e-5)
    assert e.states[0, 4:].abs().max() == 0 and e.states[1, 8:].abs().max() == 0
    assert e.states[0, :4].norm(dim=-1).min() > 1
    # Wan's DiT attends to every position, the zeros too: so does ours.
    assert e.mask.all()
    # Each prompt's states are those of the prompt run alone (batching pads nothing in).
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(download / "tokenizer", local_files_only=True)
    with torch.no_grad():
        alone = encoder.model(**tok("a red circle", return_tensors="pt")).last_hidden_state
    torch.testing.assert_close(e.states[0, :4], alone[0], atol=1e-5, rtol=1e-5)
    # Pooled: the normalized mean over the prompt's tokens.
    mean = e.states[1, :8].mean(dim=0)
    torch.testing.assert_close(e.pooled[1], mean / mean.norm())


def test_mask_padding_marks_the_prompt_tokens(download: Path, encoder: UMT5TextEncoder):
    masked = UMT5TextEncoder(download, max_length=L, mask_padding=True)
    e = masked.encode("a red circle")
    assert e.mask[0].tolist() == [True] * 4 + [False] * (L - 4)
    assert torch.equal(e.states, encoder.encode("a red circle").states)


def test_prompts_are_cleaned_as_wan_cleans_them(encoder: UMT5TextEncoder):
    assert clean_prompt("  a &amp;amp;  red\n\tcircle ") == "a & red circle"
    a, b = encoder.encode(["a red circle", "  a   red\ncircle  "]).states
    assert torch.equal(a, b)


def test_padded_length_and_truncation(download: Path, encoder: UMT5TextEncoder):
    long = " ".join(["red"] * 40)
    e = encoder.encode(long)
    assert e.states.shape == (1, L, 16)
    assert (e.states[0].norm(dim=-1) > 0).all()  # L tokens, the last one </s>
    torch.testing.assert_close(e.states, _wan_reference(download, [long])[0], atol=1e-5, rtol=0)
    wide = UMT5TextEncoder(download, max_length=40)
    assert wide.encode("a red circle").states.shape == (1, 40, 16)
    with pytest.raises(ValueError, match="max_length must be >= 1"):
        UMT5TextEncoder(download, max_length=0)


def test_cache_returns_the_same_tensors_without_running_the_model(encoder: UMT5TextEncoder):
    calls = []
    hook = encoder.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        encoder.clear_cache()
        first = encoder.encode(["a red circle", "a blue square", "a red circle"])
        assert len(calls) == 1  # one batch, the duplicate computed once
        assert encoder.cache_info() == {"hits": 0, "misses": 2, "size": 2, "capacity": 8}
        again = encoder.encode(["a blue square", "a red circle"])
        assert len(calls) == 1 and encoder.cache_hits == 2
        assert torch.equal(again.states, first.states[[1, 0]])
        assert torch.equal(again.pooled, first.pooled[[1, 0]])
        encoder.encode(["a red circle", "a slow pan"])  # one new prompt: one more run
        assert len(calls) == 2
        # Returned tensors are copies: changing them does not corrupt the cache.
        again.states.zero_()
        assert torch.equal(encoder.encode("a red circle").states, first.states[:1])
        assert len(calls) == 2
    finally:
        hook.remove()


def test_blends_as_minilm_blends(encoder: UMT5TextEncoder):
    a = encoder.encode("a red circle")  # 4 tokens
    b = encoder.encode("a slow pan over a blue lake")  # 8 tokens
    for mode in BlendMode:
        for w, src in ((0.0, a), (1.0, b)):
            out = blend(a, b, w, mode)
            assert torch.equal(out.states, src.states) and torch.equal(out.mask, src.mask)
        # Tokens only b has fade in from zero: half of b's state at w = 0.5.
        mid = blend(a, b, 0.5, mode)
        torch.testing.assert_close(mid.states[0, 4:8], 0.5 * b.states[0, 4:8])
        assert mid.states[0, 8:].abs().max() == 0 and mid.mask.all()
    linear = blend(a, b, 0.25, BlendMode.LINEAR)
    torch.testing.assert_close(linear.states, 0.75 * a.states + 0.25 * b.states)
    slerp = blend(a, b, 0.5, BlendMode.SLERP)
    assert abs(slerp.pooled.norm().item() - 1) < 1e-5  # unit vectors stay on the sphere
    want = (a.states[0, :4].norm(dim=-1) + b.states[0, :4].norm(dim=-1)) / 2
    torch.testing.assert_close(slerp.states[0, :4].norm(dim=-1), want, rtol=1e-4, atol=1e-5)


def test_a_flat_folder_loads_too(tmp_path: Path, download: Path, encoder: UMT5TextEncoder):
    flat = tmp_path / "umt5"
    shutil.copytree(download / "text_encoder", flat)
    for f in (download / "tokenizer").iterdir():
        shutil.copy(f, flat)
    assert resolve_folders(flat) == (flat, flat)
    e = UMT5TextEncoder(flat, max_length=L).encode("a red circle")
    assert torch.equal(e.states, encoder.encode("a red circle").states)


def test_identity_tells_umt5_from_minilm(encoder: UMT5TextEncoder):
    assert text_encoder_id(encoder) == TextEncoderId(UMT5, "d16-l2-v39")
    assert text_encoder_id(encoder).name != MINILM


def test_bundles_refuse_the_other_text_encoder(tmp_path: Path, encoder: UMT5TextEncoder):
    from model import AE_CONFIGS, CONFIGS, StreamDiT, VideoAutoencoder
    from model.bundle import BundleError, minilm_id, save_bundle
    from streamdit_live.models import build_models

    dit, ae = StreamDiT(CONFIGS["tiny"]), VideoAutoencoder(AE_CONFIGS["tiny"])
    kw = {"trained_sizes": [(64, 64)]}
    umt5 = save_bundle(tmp_path / "u.safetensors", dit, ae, text_encoder=encoder.identity, **kw)
    minilm = save_bundle(tmp_path / "m.safetensors", dit, ae, text_encoder=minilm_id(), **kw)
    cpu = torch.device("cpu")
    with pytest.raises(BundleError) as err:
        build_models("tiny", cpu, [umt5])  # the app's default encoder: MiniLM
    msg = str(err.value)
    assert f"trained with the text encoder {UMT5} but this app encodes prompts with {MINILM}" in msg
    assert msg.count(". ") == 0 and msg.endswith(".")  # one sentence
    with pytest.raises(BundleError, match=f"text encoder {MINILM} but .* with {UMT5};"):
        build_models("tiny", cpu, [minilm], encoder)


def test_a_missing_or_incomplete_folder_says_what_is_missing(tmp_path: Path, download: Path):
    with pytest.raises(FileNotFoundError, match=r"umT5 folder .*nowhere does not exist"):
        UMT5TextEncoder(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"lacks .*config\.json.*model\.safetensors"):
        UMT5TextEncoder(empty)
    (empty / "models_t5_umt5-xxl-enc-bf16.pth").touch()
    with pytest.raises(FileNotFoundError, match=r"original Wan2\.1 \.pth format is not read"):
        UMT5TextEncoder(empty)
    no_tok = tmp_path / "no-tokenizer"
    shutil.copytree(download / "text_encoder", no_tok / "text_encoder")
    with pytest.raises(
        FileNotFoundError,
        match=r"lacks a tokenizer tokenizer/tokenizer\.json \(or tokenizer/spiece",
    ):
        UMT5TextEncoder(no_tok)
    sharded = tmp_path / "sharded"
    shutil.copytree(download, sharded)
    weights = sharded / "text_encoder" / "model.safetensors"
    weights.rename(weights.with_name("model-00001-of-00002.safetensors"))
    index = {
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        }
    }
    (weights.parent / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(
        FileNotFoundError, match=r"lacks the shard text_encoder/model-00002-of-00002\.safe"
    ):
        UMT5TextEncoder(sharded)


def test_a_config_of_another_model_is_refused(tmp_path: Path, download: Path):
    other = tmp_path / "t5"
    shutil.copytree(download, other)
    config = other / "text_encoder" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "model_type": "t5"}))
    with pytest.raises(ValueError, match="describes a 't5' model, not umT5"):
        UMT5TextEncoder(other)


def test_missing_transformers_says_how_to_install(monkeypatch: pytest.MonkeyPatch, download: Path):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes it absent
    with pytest.raises(ImportError, match=r'pip install -e "\.\[wan\]"'):
        UMT5TextEncoder(download)
