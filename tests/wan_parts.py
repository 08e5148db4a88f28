"""Tiny random Wan parts for the tests: a diffusers Wan transformer, an offline umT5 tokenizer
and encoder laid out as a -Diffusers download, and a TAEHV weight file.

Nothing here imports diffusers or transformers at import time: the test modules guard those
with pytest.importorskip, and pass the diffusers class in. Every builder seeds torch itself,
so the same call gives the same weights.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from safetensors.torch import save_file

from model.taehv import TAEHV, TAEHV_CONFIGS

TEXT_DIM = 16  # the umT5 width and the transformer's text_dim
TINY_WAN = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=8,
    in_channels=4,
    out_channels=4,
    text_dim=TEXT_DIM,
    freq_dim=32,
    ffn_dim=32,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    rope_max_seq_len=64,
)
# Whole-word pieces of the tokenizer (besides every lowercase letter): 39 pieces in all.
WORDS = ("a", "red", "blue", "circle", "square", "slow", "pan", "over", "lake")


def random_wan(cls: type, std: float = 0.3, **overrides: object) -> torch.nn.Module:
    """A tiny diffusers Wan-family model (`cls`, e.g. diffusers.WanTransformer3DModel) built
    from TINY_WAN with `overrides`, every weight N(0, std), norms and tables included."""
    torch.manual_seed(0)
    model = cls(**{**TINY_WAN, **overrides})
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    return model.eval()


def save_tokenizer(folder: Path, words: tuple[str, ...] = WORDS) -> int:
    """Saves a umT5-shaped tokenizer (Unigram, Metaspace pieces, a closing </s>) to `folder`:
    <pad> 0, </s> 1, <unk> 2, then every lowercase letter and "▁word" for each of `words`.
    -> the vocabulary size (4 + 26 + len(words))."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(c, -3.0) for c in string.ascii_lowercase]  # any lowercase word tokenizes
    vocab += [("▁" + w, -1.0) for w in words]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(folder)
    return len(vocab)


def save_umt5(folder: Path, vocab_size: int, layers: int = 2) -> torch.nn.Module:
    """Saves a tiny random UMT5EncoderModel (width TEXT_DIM, 2 heads) to `folder`; -> it."""
    from transformers import UMT5Config, UMT5EncoderModel

    cfg = UMT5Config(
        vocab_size=vocab_size, d_model=TEXT_DIM, d_kv=8, d_ff=32, num_layers=layers, num_heads=2,
        relative_attention_num_buckets=8, relative_attention_max_distance=16,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = UMT5EncoderModel(cfg).eval()
    model.save_pretrained(folder)
    return model


def save_text_parts(root: Path, words: tuple[str, ...] = WORDS, layers: int = 2) -> Path:
    """A -Diffusers download's text parts in `root`: tokenizer/ and text_encoder/; -> root.
    Its umT5 identity is f"d{TEXT_DIM}-l{layers}-v{4 + 26 + len(words)}"."""
    save_umt5(root / "text_encoder", save_tokenizer(root / "tokenizer", words), layers)
    return root


def save_taehv(path: Path, latent_channels: int = 16, std: float = 0.05, seed: int = 0) -> Path:
    """Saves a tiny TAEHV with N(0, std) weights: a .pth file (as taew2_1.pth ships) or else
    safetensors, by the suffix of `path`; -> path."""
    torch.manual_seed(seed)
    ae = TAEHV(TAEHV_CONFIGS["tiny"].replace(latent_channels=latent_channels))
    with torch.no_grad():
        for p in ae.parameters():
            p.normal_(0, std)
    if path.suffix == ".pth":
        torch.save(ae.state_dict(), path)
    else:
        save_file(ae.state_dict(), str(path))
    return path
