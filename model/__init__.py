"""StreamDiT model core: pure PyTorch (no Qt, no cameras, no sockets).

Bundles (a DiT with its autoencoder and text encoder) live in `model.bundle`, imported from
there: it is also a command (`python -m model.bundle`), which must not be imported here.
"""

from model.autoencoder import AE_CONFIGS, AutoencoderConfig, VideoAutoencoder
from model.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_streamdit,
    save_checkpoint,
    state_digest,
)
from model.config import CONFIGS, StreamDiTConfig
from model.dit import StreamDiT
from model.partition import PartitionScheme
from model.stream import StreamBuffer, StreamMode
from model.text import BlendMode, TextEmbedding, TextEncoder, TextEncoderProtocol, blend

__all__ = [
    "AE_CONFIGS",
    "AutoencoderConfig",
    "BlendMode",
    "CONFIGS",
    "CheckpointError",
    "PartitionScheme",
    "StreamBuffer",
    "StreamDiT",
    "StreamDiTConfig",
    "StreamMode",
    "TextEmbedding",
    "TextEncoder",
    "TextEncoderProtocol",
    "VideoAutoencoder",
    "blend",
    "load_checkpoint",
    "load_streamdit",
    "save_checkpoint",
    "state_digest",
]
