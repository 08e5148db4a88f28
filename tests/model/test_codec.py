"""model/codec.py: both autoencoders satisfy the codec protocol and keep its frame rule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from model.autoencoder import AE_CONFIGS, VideoAutoencoder
from model.codec import (
    CodecShape,
    StreamDecoderProtocol,
    StreamEncoderProtocol,
    VideoCodec,
    latent_frames,
    latent_size,
    video_frames,
)
from model.taehv import TAEHV, TAEHV_CONFIGS


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Nonzero weights scaled by fan-in (some convs start at zero), so outputs vary."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p[0].numel() if p.ndim > 1 else 100
            p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
    return model.eval()


def _codec(name: str) -> VideoCodec:
    if name == "ours":
        return _randomize(VideoAutoencoder(AE_CONFIGS["tiny"]))  # type: ignore[return-value]
    model = _randomize(TAEHV(TAEHV_CONFIGS["tiny"]))
    with torch.no_grad():
        model.decoder[-1].bias.fill_(0.5)  # mid-grey: decoded frames not clamped flat
    return model  # type: ignore[return-value]


@pytest.mark.parametrize("name", ["ours", "taehv"])
def test_both_autoencoders_are_codecs(name: str) -> None:
    codec = _codec(name)
    assert isinstance(codec, VideoCodec)
    assert isinstance(codec.cfg, CodecShape)
    assert isinstance(codec.stream_encoder(), StreamEncoderProtocol)
    assert isinstance(codec.stream_decoder(), StreamDecoderProtocol)
    assert codec.set_compute_dtype(torch.float32) is codec


def test_other_things_are_not_codecs() -> None:
    assert not isinstance(nn.Conv2d(3, 3, 1), VideoCodec)
    assert not isinstance(AE_CONFIGS["tiny"].replace(), VideoCodec)


@pytest.mark.parametrize("name", ["ours", "taehv"])
def test_shapes_and_streams_follow_the_frame_rule(name: str) -> None:
    codec = _codec(name)
    cfg, chunk = codec.cfg, 2  # latent frames per stream chunk
    h, w = 2 * cfg.spatial_factor, 3 * cfg.spatial_factor
    frames = torch.rand(1, 3, 3 * chunk * cfg.temporal_factor, h, w) * 2 - 1
    with torch.no_grad():
        z = codec.encode(frames)
        out = codec.decode(z)
    assert z.shape == (
        1,
        cfg.latent_channels,
        latent_frames(cfg, frames.shape[2]),
        *latent_size(cfg, h, w),
    )
    assert out.shape == (1, 3, video_frames(cfg, z.shape[2]), h, w)
    step = chunk * cfg.temporal_factor
    enc, dec = codec.stream_encoder(), codec.stream_decoder()
    zs = [enc.encode(frames[:, :, i : i + step]) for i in range(0, frames.shape[2], step)]
    outs = [dec.decode(part) for part in zs]
    assert [o.shape[2] for o in outs] == [video_frames(cfg, chunk, first=i == 0) for i in range(3)]
    assert (torch.cat(zs, 2) - z).abs().max() < 1e-5
    assert (torch.cat(outs, 2) - out).abs().max() < 1e-5 and out.std() > 0.05


def test_frame_rule_numbers() -> None:
    ours, taehv = AE_CONFIGS["tiny"], TAEHV_CONFIGS["taew2_1"]
    assert ours.decode_trim == 0 and taehv.decode_trim == 3
    assert (latent_frames(ours, 16), video_frames(ours, 4)) == (4, 16)
    # Wan's 81 frames: 21 latent frames, and back to 81; later stream chunks give 4 each.
    assert (latent_frames(taehv, 81), video_frames(taehv, 21)) == (21, 81)
    assert video_frames(taehv, 2, first=False) == 8
    assert latent_size(taehv, 480, 832) == (60, 104)
    with pytest.raises(ValueError, match="multiples of 8"):
        latent_size(taehv, 480, 830)
    with pytest.raises(ValueError, match="at least one frame"):
        video_frames(ours, 0)
