"""Flow matching with sigma_min, as pure functions.

Convention (as in the paper): t=0 is noise, t=1 is data.
    x_t = t * x1 + (1 - (1 - sigma_min) * t) * x0        x0 ~ N(0, I), x1 = data
    v   = x1 - (1 - sigma_min) * x0                      d x_t / d t
`t` broadcasts against the tensors: pass it shaped (B, 1, F, 1, 1) for per-frame times.
"""

from __future__ import annotations

import torch
from torch import Tensor


def interpolate(x0: Tensor, x1: Tensor, t: Tensor | float, sigma_min: float) -> Tensor:
    """The point at time t on the straight path from noise x0 to data x1."""
    return t * x1 + (1 - (1 - sigma_min) * t) * x0


def velocity_target(x0: Tensor, x1: Tensor, sigma_min: float) -> Tensor:
    """The constant velocity of that path: the regression target of training."""
    return x1 - (1 - sigma_min) * x0


def euler_step(x: Tensor, v: Tensor, dt: Tensor | float) -> Tensor:
    """One explicit Euler step along the predicted velocity."""
    return x + v * dt


def predict_data(x_t: Tensor, v: Tensor, t: Tensor | float, sigma_min: float) -> Tensor:
    """The data point x1 implied by the velocity v at (x_t, t).

    Eliminating x0 from the two equations above gives x1 = (1 - sigma_min) x_t + a v with
    a = 1 - (1 - sigma_min) t, the coefficient of x0 in x_t.
    """
    return (1 - sigma_min) * x_t + (1 - (1 - sigma_min) * t) * v


def shift_time(t: Tensor, shift: float) -> Tensor:
    """Move time toward noise (shift > 1) as SD3/Flux do for large images.

    With noise level s = 1 - t: s' = shift * s / (1 + (shift - 1) * s). Keeps 0 and 1 fixed.
    """
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    if shift == 1.0:
        return t  # exact identity, no round-off
    s = 1 - t
    return 1 - shift * s / (1 + (shift - 1) * s)


def unshift_time(t: Tensor, shift: float) -> Tensor:
    """The inverse of `shift_time`."""
    return shift_time(t, 1.0 / shift)


def time_grid(steps: int, shift: float = 1.0, device: torch.device | str | None = None) -> Tensor:
    """steps + 1 increasing times from 0 (noise) to 1 (data), optionally shifted."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return shift_time(
        torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64, device=device), shift
    )


def bridge_start(x0: Tensor, source: Tensor, t_entry: Tensor | float, sigma_min: float) -> Tensor:
    """Where a paired path starts: the source (a plain clip) noised to the entry time, as
    video to video noises the camera's frames before the model restyles them."""
    return interpolate(x0, source, t_entry, sigma_min)


def bridge(
    start: Tensor, x1: Tensor, t: Tensor | float, t_entry: Tensor | float
) -> tuple[Tensor, Tensor]:
    """The straight path from `start` (at t_entry) to the data x1 (at t = 1): the point at
    time t >= t_entry and its constant velocity, the regression target of paired training.

    With source = x1 the path is the plain one from t_entry on (up to sigma_min), so paired
    training on an unpaired clip is ordinary flow matching.
    """
    v = (x1 - start) / (1 - t_entry)
    return start + (t - t_entry) * v, v
