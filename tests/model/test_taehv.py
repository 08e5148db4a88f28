"""model/taehv.py: the published key layout, loading by name, seamless streams, shapes, errors."""

from __future__ import annotations

import pytest
import torch

from model.codec import video_frames
from model.taehv import TAEHV, TAEHV_CONFIGS, TAEHVConfig, config_from_state_dict

TINY = TAEHV_CONFIGS["tiny"]


def _published_taew2_1_shapes() -> dict[str, tuple[int, ...]]:
    """The 128 tensors of the released taew2_1 weights, written out from the published
    architecture (not from our module): 16 latent channels, RGB at patch size 1."""
    table: dict[str, tuple[int, ...]] = {
        "encoder.0.weight": (64, 3, 3, 3),
        "encoder.0.bias": (64,),
        "encoder.2.conv.weight": (64, 128, 1, 1),  # TPool, time stride 2
        "encoder.3.weight": (64, 64, 3, 3),  # stride-2 convs carry no bias
        "encoder.7.conv.weight": (64, 128, 1, 1),  # TPool, time stride 2
        "encoder.8.weight": (64, 64, 3, 3),
        "encoder.12.conv.weight": (64, 64, 1, 1),  # TPool, time stride 1
        "encoder.13.weight": (64, 64, 3, 3),
        "encoder.17.weight": (16, 64, 3, 3),
        "encoder.17.bias": (16,),
        "decoder.1.weight": (256, 16, 3, 3),
        "decoder.1.bias": (256,),
        "decoder.7.conv.weight": (256, 256, 1, 1),  # TGrow, time stride 1
        "decoder.8.weight": (128, 256, 3, 3),
        "decoder.13.conv.weight": (256, 128, 1, 1),  # TGrow, time stride 2
        "decoder.14.weight": (64, 128, 3, 3),
        "decoder.19.conv.weight": (128, 64, 1, 1),  # TGrow, time stride 2
        "decoder.20.weight": (64, 64, 3, 3),
        "decoder.22.weight": (3, 64, 3, 3),
        "decoder.22.bias": (3,),
    }
    memblocks = [("encoder", i, 64) for i in (4, 5, 6, 9, 10, 11, 14, 15, 16)]
    memblocks += [("decoder", i, 256) for i in (3, 4, 5)]
    memblocks += [("decoder", i, 128) for i in (9, 10, 11)]
    memblocks += [("decoder", i, 64) for i in (15, 16, 17)]
    for part, i, ch in memblocks:  # conv(2ch -> ch), ReLU, conv, ReLU, conv
        for j, cin in ((0, 2 * ch), (2, ch), (4, ch)):
            table[f"{part}.{i}.conv.{j}.weight"] = (ch, cin, 3, 3)
            table[f"{part}.{i}.conv.{j}.bias"] = (ch,)
    return table


def _randomize(model: TAEHV, seed: int = 0) -> TAEHV:
    """Weights scaled by fan-in so activations stay O(1), and a mid-grey output bias, so
    decoded frames are not clamped flat and tolerances mean something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p[0].numel() if p.ndim > 1 else 100
            p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
        model.decoder[-1].bias.fill_(0.5)
    return model.eval()


def _frames(b: int, f: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, f, h, w, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def tiny() -> TAEHV:
    return _randomize(TAEHV(TINY))


def test_full_size_layout_is_the_published_one() -> None:
    sd = TAEHV(TAEHV_CONFIGS["taew2_1"]).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == _published_taew2_1_shapes()
    assert len(sd) == 128 and sum(k.endswith(".bias") for k in sd) == 58


def test_full_size_random_state_dict_loads_by_name() -> None:
    g = torch.Generator().manual_seed(3)
    sd = {k: torch.randn(s, generator=g) for k, s in _published_taew2_1_shapes().items()}
    assert config_from_state_dict(sd) == TAEHV_CONFIGS["taew2_1"]
    model = TAEHV(config_from_state_dict(sd)).load_weights(sd)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in sd.items())


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_small_width_file_loads_with_its_config_inferred(tmp_path, suffix: str) -> None:
    sd = _randomize(TAEHV(TINY), seed=5).state_dict()
    path = tmp_path / f"taew2_1{suffix}"
    if suffix == ".pth":
        torch.save(sd, path)
    else:
        from safetensors.torch import save_file

        save_file(sd, str(path))
    model = TAEHV.load(path)
    assert model.cfg == TINY and not model.training
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())


def test_wrong_state_dicts_are_refused_in_one_sentence(tmp_path) -> None:
    sd = TAEHV(TINY).state_dict()
    missing = {k: v for k, v in sd.items() if k not in ("decoder.1.weight", "decoder.22.bias")}
    with pytest.raises(
        ValueError, match=r"lacks 2 tensors \(decoder\.1\.weight, decoder\.22\.bias\)"
    ):
        TAEHV(TINY).load_weights(missing)
    with pytest.raises(ValueError, match=r"has 1 unknown ones \(encoder\.99\.weight\)"):
        TAEHV(TINY).load_weights({**sd, "encoder.99.weight": torch.zeros(1)})
    wide = TAEHV(TINY.replace(latent_channels=8)).state_dict()
    with pytest.raises(ValueError, match=r"encoder\.17\.weight has shape \(8, 8, 3, 3\)") as err:
        TAEHV(TINY).load_weights(wide)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="not a TAEHV state dict: it lacks encoder.0.weight"):
        config_from_state_dict({"blocks.0.weight": torch.zeros(1)})
    with pytest.raises(FileNotFoundError, match="no TAEHV weight file"):
        TAEHV.load(tmp_path / "absent.pth")


@pytest.mark.parametrize("chunk", [4, 8, 1, 3])  # video frames: 1 and 2 latent frames, partial
def test_stream_encode_equals_whole(tiny: TAEHV, chunk: int) -> None:
    x = _frames(2, 24, 32, 48)
    whole = tiny.encode(x)
    stream = tiny.stream_encoder()
    parts = [stream.encode(x[:, :, i : i + chunk]) for i in range(0, 24, chunk)]
    assert sum(p.shape[2] for p in parts) == 6
    assert (torch.cat(parts, dim=2) - whole).abs().max() < 1e-5
    assert whole.std() > 0.1  # not a degenerate network


@pytest.mark.parametrize("chunk", [1, 2])  # latent frames
def test_stream_decode_equals_whole(tiny: TAEHV, chunk: int) -> None:
    z = tiny.encode(_frames(1, 24, 32, 48))  # 6 latent frames
    whole = tiny.decode(z)
    stream = tiny.stream_decoder()
    parts = [stream.decode(z[:, :, i : i + chunk]) for i in range(0, 6, chunk)]
    assert [p.shape[2] for p in parts] == [
        video_frames(TINY, chunk, first=i == 0) for i in range(len(parts))
    ]
    assert (torch.cat(parts, dim=2) - whole).abs().max() < 1e-5
    assert whole.std() > 0.05 and whole.abs().max() <= 1  # not clamped flat, in [-1, 1]


def test_reset_starts_a_new_stream_and_sizes_must_continue(tiny: TAEHV) -> None:
    x = _frames(1, 8, 32, 32)
    stream = tiny.stream_decoder()
    z = tiny.encode(x)
    first = stream.decode(z)
    with pytest.raises(ValueError, match="do not continue this stream"):
        stream.decode(tiny.encode(_frames(1, 4, 32, 48)))
    stream.reset()
    assert torch.equal(stream.decode(z), first)


@pytest.mark.parametrize(("h", "w"), [(256, 256), (144, 256)])
def test_shapes_and_the_frame_count_rule(tiny: TAEHV, h: int, w: int) -> None:
    x = _frames(1, 9, h, w)  # Wan's 4k + 1 frames: padded to 12 with the last frame
    z = tiny.encode(x)
    assert z.shape == (1, 16, 3, h // 8, w // 8)
    assert torch.equal(z, tiny.encode(torch.cat([x, x[:, :, -1:].expand(-1, -1, 3, -1, -1)], 2)))
    assert tiny.decode(z).shape == (1, 3, 9, h, w)


def test_full_size_shapes() -> None:
    model = _randomize(TAEHV())
    z = model.encode(_frames(1, 5, 16, 24))
    assert z.shape == (1, 16, 2, 2, 3)
    assert model.decode(z).shape == (1, 3, 5, 16, 24)


def test_patch_size_two_makes_sixteen_times_smaller_latents() -> None:
    cfg = TINY.replace(patch_size=2, latent_channels=48)
    model = _randomize(TAEHV(cfg))
    assert model.state_dict()["encoder.0.weight"].shape == (8, 12, 3, 3)
    assert config_from_state_dict(model.state_dict()) == cfg
    z = model.encode(_frames(1, 4, 32, 64))
    assert z.shape == (1, 48, 1, 2, 4) and model.decode(z).shape == (1, 3, 1, 32, 64)


def test_causal_in_time(tiny: TAEHV) -> None:
    """Latent j reads frames up to 4j + 3 only; decoded frame t reads latents up to
    (t + 3) // 4 only: what lets a stream run without look-ahead."""
    x = _frames(1, 12, 32, 32)
    y = x.clone()
    y[:, :, 8:] = -y[:, :, 8:]
    zx, zy = tiny.encode(x), tiny.encode(y)
    assert torch.equal(zx[:, :, :2], zy[:, :, :2]) and not torch.equal(zx[:, :, 2], zy[:, :, 2])
    z2 = zx.clone()
    z2[:, :, 2] = 0
    fx, f2 = tiny.decode(zx), tiny.decode(z2)  # 9 frames; latent 2 makes frames 5..8
    assert torch.equal(fx[:, :, :5], f2[:, :, :5]) and not torch.equal(fx[:, :, 5], f2[:, :, 5])


def test_bf16_compute_keeps_float32_io_and_stays_close() -> None:
    model = _randomize(TAEHV(TINY))
    x = _frames(1, 8, 32, 32)
    want = model.decode(model.encode(x))
    model.set_compute_dtype(torch.bfloat16)
    assert model.dtype == torch.float32 and model.compute_dtype == torch.bfloat16
    got = model.decode(model.encode(x))
    assert got.dtype == torch.float32 and (got - want).abs().mean() < 0.05


def test_bad_inputs_are_refused_in_one_sentence(tiny: TAEHV) -> None:
    with pytest.raises(ValueError, match=r"size in positive multiples of 8"):
        tiny.encode(_frames(1, 4, 36, 32))
    with pytest.raises(ValueError, match=r"must be \(B, 16, F, H, W\)"):
        tiny.decode(torch.zeros(1, 8, 1, 4, 4))
    with pytest.raises(ValueError, match="convert with"):
        tiny.encode(_frames(1, 4, 32, 32).double())
    with pytest.raises(ValueError, match="decoder_widths must be 4"):
        TAEHVConfig(decoder_widths=(8, 8))  # type: ignore[arg-type]


def _checksums(t: torch.Tensor) -> list[float]:
    """One number per frame, weighting every element differently (catches permutations)."""
    w = torch.linspace(-1, 1, t[0, :, 0].numel()).view(t[0, :, 0].shape)
    return [(t[0, :, i] * w).sum().item() for i in range(t.shape[2])]


def test_matches_values_recorded_from_the_published_implementation(tiny: TAEHV) -> None:
    """Recorded once with the layers and the whole-clip function of madebyollin's taehv.py
    (rebuilt at these widths) on the same seeded weights and frames; guards what streaming
    equality cannot: the meaning of each layer (concatenation order, which frames pool and
    grow together, the trim)."""
    x = _frames(1, 9, 32, 48)
    z = tiny.encode(x)
    assert _checksums(z) == pytest.approx([14.2568, 25.0381, 30.5479], abs=2e-3)
    want = [-10.1588, -60.5178, -13.3958, -61.5947, -21.7307, -50.0015, -0.4527, -64.0283]
    assert _checksums(tiny.decode(z)) == pytest.approx([*want, -22.6355], abs=2e-3)
