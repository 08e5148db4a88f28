"""StreamDiT model core: pure PyTorch (no Qt, no cameras, no sockets)."""

from model.checkpoint import CheckpointError, load_checkpoint, load_streamdit, save_checkpoint
from model.config import CONFIGS, StreamDiTConfig
from model.dit import StreamDiT
from model.partition import PartitionScheme
from model.stream import StreamBuffer, StreamMode

__all__ = [
    "CONFIGS",
    "CheckpointError",
    "PartitionScheme",
    "StreamBuffer",
    "StreamDiT",
    "StreamDiTConfig",
    "StreamMode",
    "load_checkpoint",
    "load_streamdit",
    "save_checkpoint",
]
