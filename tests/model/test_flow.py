import torch

from model import flow
from model.flow import (
    euler_step,
    interpolate,
    predict_data,
    shift_time,
    time_grid,
    unshift_time,
    velocity_target,
)

SIGMA = 1e-3


def _pair(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 4, generator=g, dtype=torch.float64), torch.randn(
        2, 3, 4, generator=g, dtype=torch.float64
    )


def test_interpolate_endpoints_match_the_paper():
    x0, x1 = _pair()
    assert torch.equal(interpolate(x0, x1, 0.0, SIGMA), x0)
    assert torch.allclose(interpolate(x0, x1, 1.0, SIGMA), x1 + SIGMA * x0)


def test_velocity_is_the_time_derivative_of_the_path():
    x0, x1 = _pair(1)
    t, h = 0.37, 1e-6
    numeric = (interpolate(x0, x1, t + h, SIGMA) - interpolate(x0, x1, t - h, SIGMA)) / (2 * h)
    assert torch.allclose(numeric, velocity_target(x0, x1, SIGMA), atol=1e-8)


def test_euler_with_the_true_velocity_follows_the_straight_path_exactly():
    x0, x1 = _pair(2)
    v = velocity_target(x0, x1, SIGMA)
    x = x0.clone()
    times = time_grid(7, shift=3.0).tolist()  # uneven steps: still exact on a straight line
    for a, b in zip(times[:-1], times[1:], strict=True):
        x = euler_step(x, v, b - a)
    assert torch.allclose(x, interpolate(x0, x1, 1.0, SIGMA), atol=1e-12)


def test_predict_data_inverts_the_interpolant_per_frame_times():
    x0, x1 = _pair(3)
    t = torch.tensor([0.0, 0.2, 0.9, 1.0], dtype=torch.float64)  # broadcasts on the last axis
    x_t = interpolate(x0, x1, t, SIGMA)
    assert torch.allclose(predict_data(x_t, velocity_target(x0, x1, SIGMA), t, SIGMA), x1)


def test_shift_time_keeps_endpoints_moves_toward_noise_and_inverts():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    s = shift_time(t, 3.0)
    assert s[0] == 0 and s[-1] == 1
    assert torch.all(s[1:-1] < t[1:-1])  # more time spent at high noise
    assert torch.all(s[1:] > s[:-1])
    assert torch.allclose(unshift_time(s, 3.0), t)
    assert torch.equal(shift_time(t, 1.0), t)


def test_bridge_runs_from_the_noised_source_to_the_data_at_constant_speed():
    g = torch.Generator().manual_seed(1)
    x0, source, x1 = (torch.randn(2, 3, 4, generator=g) for _ in range(3))
    t_e = 0.4
    start = flow.bridge_start(x0, source, t_e, 0.0)
    assert torch.allclose(start, flow.interpolate(x0, source, t_e, 0.0))
    at_entry, v = flow.bridge(start, x1, t_e, t_e)
    at_end, _ = flow.bridge(start, x1, 1.0, t_e)
    assert torch.allclose(at_entry, start) and torch.allclose(at_end, x1, atol=1e-6)
    # Euler along v from t_e reaches x1 in one step: the velocity is the path's derivative.
    assert torch.allclose(flow.euler_step(start, v, 1 - t_e), x1, atol=1e-6)


def test_bridge_from_the_data_itself_is_the_plain_path():
    g = torch.Generator().manual_seed(2)
    x0, x1 = torch.randn(5, generator=g), torch.randn(5, generator=g)
    start = flow.bridge_start(x0, x1, 0.3, 0.0)
    for t in (0.3, 0.6, 0.9):
        x_t, v = flow.bridge(start, x1, t, 0.3)
        assert torch.allclose(x_t, flow.interpolate(x0, x1, t, 0.0), atol=1e-6)
        assert torch.allclose(v, flow.velocity_target(x0, x1, 0.0), atol=1e-5)
