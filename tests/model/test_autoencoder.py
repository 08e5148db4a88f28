"""model/autoencoder.py: shapes, seamless streaming, clear errors, checkpoints."""

from __future__ import annotations

import pytest
import torch

from model.autoencoder import AE_CONFIGS, AutoencoderConfig, VideoAutoencoder
from model.config import CONFIGS

TINY = AE_CONFIGS["tiny"]


def _randomize(ae: VideoAutoencoder, seed: int = 0) -> VideoAutoencoder:
    """Nonzero weights everywhere (residual convs start at zero) so every path is exercised;
    scaled by fan-in so activations stay O(1) and absolute tolerances mean something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ae.parameters():
            fan_in = p[0].numel() if p.ndim > 1 else 100
            p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
    return ae.eval()


def _frames(b: int, f: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, f, h, w, generator=g) * 2 - 1


@pytest.mark.parametrize("name", ["tiny", "cpu", "4b"])
def test_presets_match_dit_latent_channels(name: str) -> None:
    assert AE_CONFIGS[name].latent_channels == CONFIGS[name].latent_channels
    assert AE_CONFIGS[name].temporal_factor == 4
    assert AE_CONFIGS[name].spatial_factor == 8


@pytest.mark.parametrize(
    ("tc", "s", "f", "h", "w"),
    [(4, 8, 8, 32, 48), (1, 4, 3, 16, 8), (2, 16, 4, 32, 64), (4, 4, 4, 8, 12), (2, 8, 2, 16, 16)],
)
def test_shapes_follow_compression_factors(tc: int, s: int, f: int, h: int, w: int) -> None:
    ae = VideoAutoencoder(TINY.replace(temporal_factor=tc, spatial_factor=s)).eval()
    x = _frames(2, f, h, w)
    z = ae.encode(x)
    assert z.shape == (2, TINY.latent_channels, f // tc, h // s, w // s)
    y = ae.decode(z)
    assert y.shape == x.shape
    assert y.dtype == torch.float32


def test_cpu_preset_shapes_at_256() -> None:
    ae = VideoAutoencoder(AE_CONFIGS["cpu"]).eval()
    with torch.no_grad():
        z = ae.encode(_frames(1, 4, 256, 256))
        assert z.shape == (1, 8, 1, 32, 32)
        assert ae.decode(z).shape == (1, 3, 4, 256, 256)


@pytest.mark.parametrize(("kt", "tc", "s"), [(1, 4, 8), (2, 4, 8), (3, 4, 8), (3, 1, 16)])
def test_stream_encode_chunks_equal_whole(kt: int, tc: int, s: int) -> None:
    cfg = TINY.replace(temporal_kernel=kt, temporal_factor=tc, spatial_factor=s)
    ae = _randomize(VideoAutoencoder(cfg))
    x = _frames(2, 24, 32, 48)
    with torch.no_grad():
        whole = ae.encode(x)
        enc = ae.stream_encoder()
        # Uneven chunk sizes (video frames, multiples of tc) cross every boundary kind.
        bounds = [0, 4, 12, 16, 24]
        parts = [enc.encode(x[:, :, a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    assert (torch.cat(parts, dim=2) - whole).abs().max().item() <= 1e-5
    # The causal state actually matters: a fresh stream on the last chunk differs.
    if kt > 1:
        fresh = ae.stream_encoder().encode(x[:, :, 16:24])
        assert (fresh - whole[:, :, 16 // tc :]).abs().max().item() > 1e-3


@pytest.mark.parametrize("kt", [2, 3])
def test_stream_decode_chunks_equal_whole(kt: int) -> None:
    ae = _randomize(VideoAutoencoder(TINY.replace(temporal_kernel=kt, temporal_factor=2)))
    z = torch.randn(1, TINY.latent_channels, 7, 4, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        whole = ae.decode(z)
        dec = ae.stream_decoder()
        parts = [dec.decode(z[:, :, a:b]) for a, b in [(0, 1), (1, 3), (3, 4), (4, 7)]]
    assert whole.shape == (1, 3, 14, 32, 48)
    assert (torch.cat(parts, dim=2) - whole).abs().max().item() <= 1e-5
    # Later frames depend on earlier latents (temporal context), earlier never on later.
    z2 = z.clone()
    z2[:, :, 5] += 1.0
    with torch.no_grad():
        moved = ae.decode(z2)
    # Causal: frames before latent 5's are untouched.
    assert (moved[:, :, :10] - whole[:, :, :10]).abs().max() <= 1e-6
    assert (moved[:, :, 12:] - whole[:, :, 12:]).abs().max() > 1e-4  # latent 6 sees latent 5


def test_bf16_compute_streams_within_rounding_of_float32() -> None:
    """bf16 convolutions, as the app runs the codec on CPUs with native bf16: frames and
    latents stay float32, a stream still equals the whole clip, and the output stays within
    bf16 rounding of the float32 codec (~50 dB measured; the shipped weights' check is in
    tests/streamdit_live/test_models_dtype.py)."""
    ae = _randomize(VideoAutoencoder(AE_CONFIGS["cpu"]))
    x = _frames(1, 8, 32, 48)
    with torch.no_grad():
        z32 = ae.encode(x)
        y32 = ae.decode(z32)
    assert ae.set_compute_dtype(torch.bfloat16) is ae
    assert (ae.dtype, ae.compute_dtype) == (torch.float32, torch.bfloat16)
    enc, dec = ae.stream_encoder(), ae.stream_decoder()
    z = torch.cat([enc.encode(x[:, :, :4]), enc.encode(x[:, :, 4:])], dim=2)
    y = torch.cat([dec.decode(z[:, :, :1]), dec.decode(z[:, :, 1:])], dim=2)
    assert z.dtype == y.dtype == torch.float32
    with torch.no_grad():  # one bf16 step (2**-8 relative) of tolerance for kernel choices
        assert (ae.encode(x) - z).abs().max() <= 2e-2
        assert (ae.decode(z) - y).abs().max() <= 2e-2
    assert (z - z32).abs().max() <= 0.05
    assert (y - y32).abs().max() <= 0.1
    mse = (y.clamp(-1, 1) - y32.clamp(-1, 1)).square().mean() / 4  # in units of the range
    assert -10 * torch.log10(mse) >= 40


def test_set_compute_dtype_takes_float_dtypes_only() -> None:
    with pytest.raises(ValueError, match="float dtype, got torch.int8"):
        VideoAutoencoder(TINY).set_compute_dtype(torch.int8)


def test_channels_last_frames_encode_as_contiguous_ones() -> None:
    """The app's frames are channels-last video (frames_to_tensor permutes (F, H, W, 3))."""
    ae = _randomize(VideoAutoencoder(TINY))
    x = _frames(2, 8, 16, 24)
    with torch.no_grad():
        z = ae.encode(x.contiguous(memory_format=torch.channels_last_3d))
        assert (z - ae.encode(x)).abs().max() <= 1e-6
        assert ae.decode(z).is_contiguous(memory_format=torch.channels_last_3d)  # (F, H, W, 3)


def test_every_parameter_gets_a_gradient() -> None:
    ae = _randomize(VideoAutoencoder(TINY.replace(temporal_kernel=3))).train()
    x = _frames(1, 8, 16, 16)
    (ae(x) - x).square().mean().backward()
    dead = [n for n, p in ae.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not dead


def test_stream_reset_starts_a_new_stream() -> None:
    ae = _randomize(VideoAutoencoder(TINY))
    x = _frames(1, 8, 16, 16)
    enc = ae.stream_encoder()
    first = enc.encode(x[:, :, :4])
    enc.encode(x[:, :, 4:])
    enc.reset()
    assert torch.equal(enc.encode(x[:, :, :4]), first)


def test_stream_rejects_size_change_without_reset() -> None:
    ae = VideoAutoencoder(TINY).eval()
    dec = ae.stream_decoder()
    dec.decode(torch.zeros(1, 4, 1, 4, 4))
    with pytest.raises(ValueError, match=r"batch 1 and size 8x8 .* size 4x4; call reset\(\)"):
        dec.decode(torch.zeros(1, 4, 1, 8, 8))
    dec.reset()
    assert dec.decode(torch.zeros(1, 4, 1, 8, 8)).shape == (1, 3, 4, 64, 64)


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (torch.zeros(1, 3, 4, 16), r"5-D .*got 4-D"),
        (torch.zeros(1, 4, 4, 16, 16), r"3 channels, got 4"),
        (torch.zeros(1, 3, 6, 16, 16), r"frame count 6 .*multiple of 4"),
        (torch.zeros(1, 3, 4, 20, 16), r"size 20x16 .*multiples of 8"),
        (torch.zeros(1, 3, 4, 16, 16, dtype=torch.uint8), r"dtype torch.uint8 .*torch.float32"),
        (torch.zeros(1, 3, 4, 16, 16, dtype=torch.float64), r"dtype torch.float64"),
    ],
)
def test_encode_wrong_input_is_one_clear_error(x: torch.Tensor, match: str) -> None:
    ae = VideoAutoencoder(TINY)
    with pytest.raises(ValueError, match=match):
        ae.encode(x)


def test_decode_wrong_input_is_one_clear_error() -> None:
    ae = VideoAutoencoder(TINY)
    with pytest.raises(ValueError, match=r"latents must have 4 channels, got 8"):
        ae.decode(torch.zeros(1, 8, 1, 4, 4))
    with pytest.raises(ValueError, match=r"latents must be 5-D"):
        ae.stream_decoder().decode(torch.zeros(4, 1, 4, 4))
    with pytest.raises(TypeError, match="torch.Tensor"):
        ae.encode([[0.0]])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"temporal_factor": 3}, r"temporal_factor must be one of \(1, 2, 4\), got 3"),
        ({"spatial_factor": 2}, r"spatial_factor must be one of \(4, 8, 16\), got 2"),
        ({"latent_channels": 0}, r"latent_channels must be >= 1, got 0"),
        ({"channels": 32, "max_channels": 16}, r"max_channels \(16\) must be >= channels \(32\)"),
    ],
)
def test_config_validation_names_values(changes: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TINY.replace(**changes)


def test_config_dict_round_trip_and_unknown_keys() -> None:
    cfg = AE_CONFIGS["cpu"]
    assert AutoencoderConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown AutoencoderConfig keys"):
        AutoencoderConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_calibrate_gives_unit_variance_latents_and_decode_undoes_it() -> None:
    ae = _randomize(VideoAutoencoder(TINY))
    x = _frames(2, 8, 32, 32)
    raw = ae.encode(x)
    ae.calibrate(x)
    z = ae.encode(x)
    assert z.mean(dim=(0, 2, 3, 4)).abs().max() < 1e-4
    assert (z.std(dim=(0, 2, 3, 4)) - 1).abs().max() < 1e-4
    # decode(encode) is invariant to the normalization: it is undone inside decode.
    with torch.no_grad():
        unnormalized = VideoAutoencoder(TINY)
        unnormalized.load_state_dict(
            {**ae.state_dict(), "latent_shift": torch.zeros(4), "latent_scale": torch.ones(4)}
        )
        assert torch.allclose(unnormalized.decode(raw), ae.decode(z), atol=1e-5)


def test_checkpoint_round_trip(tmp_path) -> None:
    ae = _randomize(VideoAutoencoder(TINY.replace(temporal_factor=2)))
    ae.calibrate(_frames(1, 4, 16, 16))
    path = ae.save(tmp_path / "ae.safetensors")
    loaded = VideoAutoencoder.load(path)
    assert loaded.cfg == ae.cfg
    for k, v in ae.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = _frames(1, 4, 16, 16)
    assert torch.equal(loaded.encode(x), ae.encode(x))


@pytest.mark.parametrize("name", ["tiny", "cpu", "4b"])
def test_shortcuts_alone_are_a_block_colour_codec(name: str) -> None:
    """With every conv at zero only the parameter-free shortcuts remain: they carry each
    8x8x4 block's mean colour through latent channels 0-2 and paint it back."""
    ae = VideoAutoencoder(AE_CONFIGS[name]).eval()
    with torch.no_grad():
        for p in ae.parameters():
            p.zero_()
        ae.encoder.add_shortcuts()  # the linear shortcuts live in the conv weights
        ae.decoder.add_shortcuts()
        x = _frames(1, 8, 16, 24)
        z = ae.encode(x)
        y = ae.decode(z)
    blocks = x.unflatten(2, (2, 4)).unflatten(4, (2, 8)).unflatten(6, (3, 8))
    means = blocks.mean(dim=(3, 5, 7))  # (1, 3, 2, 2, 3): per 4-frame, 8x8 block
    assert torch.allclose(z[:, :3], means, atol=1e-5)
    assert z[:, 3:].abs().max() < 1e-6
    painted = means.repeat_interleave(4, 2).repeat_interleave(8, 3).repeat_interleave(8, 4)
    assert torch.allclose(y, painted, atol=1e-5)


def test_shortcuts_can_be_turned_off() -> None:
    cfg = AE_CONFIGS["cpu"].replace(shortcuts=False)
    ae = VideoAutoencoder(cfg).eval()
    assert ae.encoder.out_short is None and ae.decoder.head_short is None
    with torch.no_grad():
        for p in ae.parameters():
            p.zero_()
        ae.encoder.add_shortcuts()
        ae.decoder.add_shortcuts()
        assert ae.decode(ae.encode(torch.full((1, 3, 4, 16, 16), 0.5))).abs().max() == 0
    assert AutoencoderConfig.from_dict(cfg.to_dict()) == cfg
