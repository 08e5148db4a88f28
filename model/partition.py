"""Unified partitioning of the moving buffer (StreamDiT §3), as pure functions.

The buffer holds B = K + N*c latent frames, oldest first: K clean reference frames, then N
chunks of c frames. Chunk position p counts stages from the noisy end (p = 0 is the newest
chunk). A chunk spends s micro steps at each stage, so a frame takes T = s*N steps from
noise to data; its schedule time after j steps is j/T. After the s-th micro step the oldest
chunk reaches t = 1, leaves the buffer, and a fresh chunk enters at t = 0.

Special cases are parameter choices: c = B (N = 1) is uniform diffusion with s steps, and
c = 1, s = 1 is the diagonal (FIFO-Diffusion) scheme.

`buffer_steps` and `step_times` are the one owner of "which frame is at which level": the
stream (`model.stream.StreamBuffer`) and distillation's teacher rollout both read them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from model.flow import shift_time


@dataclass(frozen=True)
class PartitionScheme:
    ref_frames: int  # K
    chunks: int  # N
    chunk_size: int  # c
    micro_steps: int  # s

    def __post_init__(self) -> None:
        if self.ref_frames < 0 or self.chunks < 1 or self.chunk_size < 1 or self.micro_steps < 1:
            raise ValueError(
                "need ref_frames >= 0 and chunks, chunk_size, micro_steps >= 1, got "
                f"K={self.ref_frames}, N={self.chunks}, c={self.chunk_size}, s={self.micro_steps}"
            )

    @property
    def buffer_frames(self) -> int:
        """B = K + N*c."""
        return self.ref_frames + self.chunks * self.chunk_size

    @property
    def total_steps(self) -> int:
        """T = s*N: model calls each frame sees on its way from noise to data."""
        return self.micro_steps * self.chunks

    def chunk_steps(self, position: int, micro_step: int) -> int:
        """Steps already taken by the chunk at `position` (0 = newest) at `micro_step`."""
        return position * self.micro_steps + micro_step

    def frame_steps(self, micro_step: int) -> Tensor:
        """(B,) steps taken by every buffer frame at `micro_step` (0..s-1); refs count T."""
        return buffer_steps(self, micro_step)

    def frame_times(self, micro_step: int) -> Tensor:
        """(B,) schedule times in [0, 1] of the buffer's frames at `micro_step`."""
        return self.frame_steps(micro_step).double() / self.total_steps

    def active(self) -> Tensor:
        """(B,) bool: the frames that are denoised (False on the clean reference frames)."""
        return torch.arange(self.buffer_frames) >= self.ref_frames


def stream_scheme(
    buffer_frames: int, chunk_size: int, micro_steps: int, levels: int = 0, video: bool = False
) -> PartitionScheme:
    """The scheme a stream runs (K = 0): one noise level per chunk of a `buffer_frames`-frame
    buffer, or in video mode `levels` when fewer. Video mode keeps only the stages below its
    entry level, so fewer, larger levels let a chunk out sooner: ceil(strength x N) stages,
    one chunk period apart."""
    full = buffer_frames // chunk_size
    coarse = video and 0 < levels < full
    return PartitionScheme(0, levels if coarse else full, chunk_size, micro_steps)


def buffer_steps(scheme: PartitionScheme, micro_step: int, stages: int | None = None) -> Tensor:
    """(K + stages*c,) steps taken by each frame at `micro_step` (0..s-1), oldest first.

    A buffer of `stages` chunks (default N) holds the stages nearest the clean end, as video
    mode's shortened buffer does: its newest chunk entered at step (N - stages) * s.
    Reference frames count T (clean).
    """
    n, s, c = scheme.chunks, scheme.micro_steps, scheme.chunk_size
    stages = n if stages is None else stages
    if not 0 <= micro_step < s:
        raise ValueError(f"micro_step must be in [0, {s}), got {micro_step}")
    if not 1 <= stages <= n:
        raise ValueError(f"stages must be in [1, {n}], got {stages}")
    refs = torch.full((scheme.ref_frames,), scheme.total_steps, dtype=torch.long)
    # Positions counted from the noisy end of the full buffer; a shortened one lacks 0..N-stages-1.
    positions = torch.arange(n - 1, n - stages - 1, -1).repeat_interleave(c)  # oldest first
    return torch.cat([refs, scheme.chunk_steps(positions, micro_step)])


def schedule_time(steps: Tensor, total_steps: int, shift: float = 1.0) -> Tensor:
    """Float64 schedule times of step counts: steps / T, moved by `shift` (see flow)."""
    return shift_time(steps.double() / total_steps, shift)


def step_times(
    scheme: PartitionScheme, micro_step: int, stages: int | None = None, shift: float = 1.0
) -> tuple[Tensor, Tensor]:
    """(F,) float64 times of the buffer's frames before and after one micro step.

    Reference frames stay at 1. Over the s micro steps of one stage a frame moves from
    ``step_times(scheme, 0)[0]`` to ``step_times(scheme, s - 1)[1]``: the stage a one-step
    student (the same N and c, s = 1) crosses in a single call.
    """
    steps = buffer_steps(scheme, micro_step, stages)
    after = torch.clamp(steps + 1, max=scheme.total_steps)
    return (
        schedule_time(steps, scheme.total_steps, shift),
        schedule_time(after, scheme.total_steps, shift),
    )


def sample_chunk_times(
    scheme: PartitionScheme, batch: int, generator: torch.Generator | None = None
) -> Tensor:
    """(batch, B) training times in buffer order; reference frames stay at t = 1.

    Counting chunks from the noisy end (i = p + 1 = 1..N), chunk i draws t ~ U[(i-1)/N, i/N),
    shared by its c frames: the same stage bands that `frame_times` walks through.
    """
    n, c = scheme.chunks, scheme.chunk_size
    u = torch.rand(batch, n, generator=generator, dtype=torch.float64)
    stage = torch.arange(n - 1, -1, -1, dtype=torch.float64)  # oldest chunk is the last stage
    t = (stage + u) / n  # (batch, N), chunk k in [stage_k / N, (stage_k + 1) / N)
    t = t.repeat_interleave(c, dim=1)  # (batch, N*c)
    refs = torch.ones(batch, scheme.ref_frames, dtype=torch.float64)
    return torch.cat([refs, t], dim=1).float()


def chunk_size_choices(buffer_frames: int, ref_frames: int = 0) -> list[int]:
    """Powers of two dividing B - K, up to B - K itself (the uniform case) included."""
    free = buffer_frames - ref_frames
    if free < 1:
        raise ValueError(f"buffer_frames ({buffer_frames}) must exceed ref_frames ({ref_frames})")
    sizes, c = [], 1
    while c <= free:
        if free % c == 0:
            sizes.append(c)
        c *= 2
    if free not in sizes:
        sizes.append(free)
    return sizes


def sample_mixed_times(
    buffer_frames: int,
    batch: int,
    chunk_sizes: list[int] | None = None,
    ref_frames: int = 0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Mixed training: each example draws its chunk size uniformly from `chunk_sizes`.

    Returns times (batch, B) and the chunk size used per example (batch,).
    """
    sizes = chunk_sizes or chunk_size_choices(buffer_frames, ref_frames)
    free = buffer_frames - ref_frames
    bad = [c for c in sizes if c < 1 or free % c]
    if bad:
        raise ValueError(f"chunk sizes {bad} do not divide the {free} non-reference frames")
    pick = torch.randint(len(sizes), (batch,), generator=generator)
    times = torch.empty(batch, buffer_frames)
    for i, j in enumerate(pick.tolist()):
        scheme = PartitionScheme(ref_frames, free // sizes[j], sizes[j], 1)
        times[i] = sample_chunk_times(scheme, 1, generator)[0]
    return times, torch.tensor([sizes[j] for j in pick.tolist()])
