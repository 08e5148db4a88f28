"""The moving buffer: one model call per `step()`, a clean chunk out every s steps.

Text mode: new chunks enter as pure noise and the stream never ends. Video mode (SDEdit
style): input latent chunks enter noised to the level set by `strength`, and the buffer holds
only the stages below that level, so lower strength means fewer calls per frame and less
latency. Noise comes from one seeded CPU generator: the same seed gives the same stream.
"""

from __future__ import annotations

import math
from collections import deque
from enum import Enum

import torch
from torch import Tensor, nn

from model.flow import euler_step, interpolate
from model.partition import PartitionScheme, buffer_steps, schedule_time, step_times


class StreamMode(Enum):
    TEXT = "text"
    VIDEO = "video"


def guided_velocity(
    net: nn.Module,
    x: Tensor,
    t: Tensor,
    text: Tensor,
    text_mask: Tensor | None = None,
    guidance: float = 1.0,
    null_text: Tensor | None = None,
    null_mask: Tensor | None = None,
) -> Tensor:
    """The velocity at x (B, C, F, H, W) and times t (B, F), in one model call.

    With guidance != 1 (classifier-free guidance) the conditional and unconditional branches
    run stacked as one batch of 2B: v = v_null + guidance * (v_text - v_null). The null prompt
    is the empty prompt's states (1 or B, L, D) and mask, as the model saw them under text
    dropout in training; zeros if not given.
    """
    if guidance == 1.0:
        return net(x, t, text, text_mask)
    b = x.shape[0]
    null = torch.zeros_like(text) if null_text is None else null_text.expand(b, -1, -1)
    if null.shape[1] != text.shape[1]:
        raise ValueError(
            f"null_text has {null.shape[1]} tokens but the prompt {text.shape[1]}; "
            "encode both with the same text encoder"
        )
    mask = None
    if text_mask is not None or null_mask is not None:
        ones = torch.ones(b, null.shape[1], dtype=torch.bool, device=text.device)
        cond_mask = ones if text_mask is None else text_mask.expand(b, -1)
        mask = torch.cat([cond_mask, ones if null_mask is None else null_mask.expand(b, -1)])
    both = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([text, null]), mask)
    cond, uncond = both.chunk(2)
    return uncond + guidance * (cond - uncond)


class StreamBuffer:
    def __init__(
        self,
        net: nn.Module,
        scheme: PartitionScheme,
        latent_shape: tuple[int, int, int],
        text: Tensor,
        text_mask: Tensor | None = None,
        seed: int = 0,
        mode: StreamMode = StreamMode.TEXT,
        strength: float = 1.0,
        guidance: float = 1.0,
        null_text: Tensor | None = None,
        null_mask: Tensor | None = None,
        shift: float = 1.0,
    ):
        self.net = net.eval()
        self.scheme = scheme
        self.latent_shape = tuple(latent_shape)  # (C, H, W)
        self.sigma_min = net.cfg.sigma_min
        self.guidance = guidance
        self.shift = shift
        param = next(net.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.set_prompt(text, text_mask)
        # The unconditional branch of guidance: the empty prompt's states and mask, as the
        # model saw them under text dropout in training (zeros if not given).
        self.null_text = None if null_text is None else self._check_text(null_text)
        self.null_mask = None if null_mask is None else null_mask.to(self.device).bool()
        self.model_calls = 0
        self.reset(seed=seed, mode=mode, strength=strength)

    # --- configuration ---------------------------------------------------------------

    def reset(
        self, seed: int | None = None, mode: StreamMode | None = None, strength: float | None = None
    ) -> None:
        """Flush the buffer and the input queue; the next step starts a fresh stream."""
        self.seed = self.seed if seed is None else seed
        self.mode = self.mode if mode is None else StreamMode(mode)
        self.strength = self.strength if strength is None else strength
        if not 0.0 < self.strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {self.strength}")
        n = self.scheme.chunks
        # Video mode keeps only the stages below the entry level (at least one).
        self.stages = n if self.mode is StreamMode.TEXT else max(1, math.ceil(self.strength * n))
        self.entry_step = (n - self.stages) * self.scheme.micro_steps
        self.generator = torch.Generator().manual_seed(self.seed)
        # (1, C, K + stages*c, H, W) float32 once started; a chunk shorter after an emit.
        self.x: Tensor | None = None
        self.micro = 0
        # After an emit the buffer is one chunk short until the next step enters one: the
        # emitting step needs no new input, so a chunk leaves as soon as it is clean.
        self.pending_entry = False
        self.inputs: deque[Tensor] = deque(maxlen=self.stages + 1)  # oldest dropped first
        self.last_input: Tensor | None = None
        self.startup_calls = 0

    def set_prompt(self, text: Tensor, text_mask: Tensor | None = None) -> None:
        """Swap the text conditioning; applies from the next model call on."""
        self.text = self._check_text(text)
        self.text_mask = None if text_mask is None else text_mask.to(self.device).bool()

    def _check_text(self, text: Tensor) -> Tensor:
        dim = self.net.cfg.text_dim
        if text.ndim != 3 or text.shape[0] != 1 or text.shape[2] != dim:
            raise ValueError(f"text must be (1, L, {dim}), got {tuple(text.shape)}")
        return text.to(self.device, self.dtype)

    @property
    def chunk_frames(self) -> int:
        return self.scheme.chunk_size

    @property
    def latency_steps(self) -> int:
        """Model calls between a chunk entering the buffer and leaving it."""
        return self.stages * self.scheme.micro_steps

    # --- input -----------------------------------------------------------------------

    def push(self, latents: Tensor) -> None:
        """Queue an input chunk (1, C, c, H, W) for video mode; the oldest is dropped when full."""
        expected = (1, self.latent_shape[0], self.chunk_frames, *self.latent_shape[1:])
        if tuple(latents.shape) != expected:
            raise ValueError(f"input chunk must be {expected}, got {tuple(latents.shape)}")
        self.inputs.append(latents.detach().to(self.device, torch.float32))

    # --- the schedule (owned by model.partition) ----------------------------------------

    def _time(self, steps: Tensor) -> Tensor:
        return schedule_time(steps, self.scheme.total_steps, self.shift)

    def _frame_steps(self, micro: int) -> Tensor:
        """(frames,) steps taken by each frame of the (possibly shortened) buffer."""
        return buffer_steps(self.scheme, micro, self.stages)

    def _noise(self, frames: int) -> Tensor:
        c, h, w = self.latent_shape
        # Drawn on the CPU so a seed gives the same stream on every device.
        return torch.randn(1, c, frames, h, w, generator=self.generator).to(self.device)

    def _enter(self, clean: Tensor | None, steps: int) -> Tensor:
        """A chunk at `steps`: noise, or `clean` noised to that level."""
        eps = self._noise(self.chunk_frames)
        if clean is None:
            return eps
        return interpolate(eps, clean, self._time(torch.tensor(steps)).item(), self.sigma_min)

    def inputs_needed(self) -> int:
        """Input chunks the next `step()` takes that are not queued yet (video mode): the
        buffer's `stages` to start, then one after each emitted chunk."""
        if self.mode is not StreamMode.VIDEO:
            return 0
        want = self.stages if self.x is None else int(self.pending_entry)
        return max(0, want - len(self.inputs))

    def _next_input(self) -> Tensor:
        if self.inputs:
            self.last_input = self.inputs.popleft()
        if self.last_input is None:
            raise RuntimeError("video mode needs an input chunk: call push() first")
        return self.last_input  # no new input in time: repeat the last one, never stall

    # --- stepping --------------------------------------------------------------------

    @torch.no_grad()
    def _velocity(self, x: Tensor, t: Tensor) -> Tensor:
        """One model call (two stacked, with guidance) on x (1, C, F, H, W) at times t (F,)."""
        x_in, t_in = x.to(self.device, self.dtype), t[None].to(self.device, torch.float32)
        v = guided_velocity(
            self.net,
            x_in,
            t_in,
            self.text,
            self.text_mask,
            self.guidance,
            self.null_text,
            self.null_mask,
        )
        self.model_calls += 1
        return v.float()

    def _start(self) -> bool:
        """Fill the staircase. Returns False while video mode still waits for input."""
        k, c = self.scheme.ref_frames, self.chunk_frames
        steps = self._frame_steps(0)
        if self.mode is StreamMode.VIDEO:
            if len(self.inputs) < self.stages:
                return False
            chunks = [self._next_input() for _ in range(self.stages)]  # oldest first
            refs = chunks[0][:, :, -1:].expand(-1, -1, k, -1, -1)  # clean input as reference
            noised = [self._enter(ch, int(steps[k + i * c])) for i, ch in enumerate(chunks)]
            self.x = torch.cat([refs, *noised], dim=2)
            return True
        # Text mode, as the paper does: one uniform generation over the whole buffer, caching
        # the latents of every step; each frame then takes the cached latent of its own level.
        calls_before = self.model_calls
        x = self._noise(k + self.stages * c)
        cache = [x]
        for j in range(int(steps.max())):
            t = self._time(torch.tensor([j, j + 1]))
            x = euler_step(
                x, self._velocity(x, t[0].float().expand(x.shape[2])), (t[1] - t[0]).item()
            )
            cache.append(x)
        self.x = torch.stack([cache[int(j)][:, :, f] for f, j in enumerate(steps)], dim=2)
        self.startup_calls = self.model_calls - calls_before
        return True

    def step(self) -> Tensor | None:
        """One model call over the whole buffer. Returns the chunk (1, C, c, H, W), float32 on
        the model's device, that became clean in this step, or None (also while video mode
        waits for input). The buffer stays float32 whatever the model's dtype (bf16 on GPUs)."""
        if self.x is None and not self._start():
            return None
        if self.pending_entry:  # the chunk that follows the last one emitted
            clean = self._next_input() if self.mode is StreamMode.VIDEO else None
            self.x = torch.cat([self.x, self._enter(clean, self.entry_step)], dim=2)
            self.pending_entry = False
        k, c = self.scheme.ref_frames, self.chunk_frames
        t, t_next = step_times(self.scheme, self.micro, self.stages, self.shift)
        dt = (t_next - t).float().to(self.device)[None, None, :, None, None]  # (1,1,F,1,1)
        self.x = euler_step(self.x, self._velocity(self.x, t.float()), dt)
        self.micro += 1
        if self.micro < self.scheme.micro_steps:
            return None
        self.micro = 0
        out = self.x[:, :, k : k + c].clone()  # the oldest chunk, now at t = 1
        refs = torch.cat([self.x[:, :, :k], out], dim=2)[:, :, c:] if k else self.x[:, :, :0]
        self.x = torch.cat([refs, self.x[:, :, k + c :]], dim=2)
        self.pending_entry = True
        return out
