import pytest
import torch

from model.partition import (
    PartitionScheme,
    buffer_steps,
    chunk_size_choices,
    sample_chunk_times,
    sample_mixed_times,
    step_times,
)

SCHEMES = [
    PartitionScheme(0, 4, 1, 2),
    PartitionScheme(0, 8, 2, 1),  # the paper's student
    PartitionScheme(2, 3, 2, 3),
    PartitionScheme(1, 1, 4, 5),  # uniform with references
    PartitionScheme(0, 5, 1, 1),  # diagonal
]


def _simulate(scheme: PartitionScheme, pops: int):
    """Track labelled frames through the buffer using only the scheme's pure functions."""
    k, c, s = scheme.ref_frames, scheme.chunk_size, scheme.micro_steps
    # Start-up staircase: slot i of the buffer holds frame label i.
    labels = list(range(scheme.buffer_frames))
    next_label = scheme.buffer_frames
    history: dict[int, list[int]] = {}
    emitted = []
    for _ in range(pops):
        for m in range(s):
            for label, steps in zip(labels, scheme.frame_steps(m).tolist(), strict=True):
                history.setdefault(label, []).append(steps)
        emitted.append(labels[k : k + c])
        labels = labels[:k] + labels[k + c :] + list(range(next_label, next_label + c))
        next_label += c
    return history, emitted


@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
def test_every_frame_passes_every_stage_in_order_for_exactly_s_micro_steps(scheme):
    history, emitted = _simulate(scheme, pops=3 * scheme.chunks + 2)
    k, T, s = scheme.ref_frames, scheme.total_steps, scheme.micro_steps
    out = [label for chunk in emitted for label in chunk]
    # Frames that entered after start-up and left: a full journey 0, 1, ..., T-1.
    born_later = [label for label in out if label >= scheme.buffer_frames]
    assert born_later, "simulation too short"
    for label in born_later:
        assert history[label] == list(range(T))
        stages = [step // s for step in history[label]]
        assert stages == [i for i in range(scheme.chunks) for _ in range(s)]
    # Chunks come out in order, one chunk per s micro steps.
    assert out == sorted(out)
    assert all(len(chunk) == scheme.chunk_size for chunk in emitted)
    # Reference frames are always at the clean end.
    for m in range(s):
        assert scheme.frame_steps(m)[:k].tolist() == [T] * k


def test_uniform_case_all_frames_share_one_time():
    scheme = PartitionScheme(0, 1, 8, 4)
    assert scheme.buffer_frames == 8 and scheme.total_steps == 4
    for m in range(4):
        times = scheme.frame_times(m)
        assert torch.all(times == m / 4)


def test_diagonal_case_is_a_staircase_one_step_apart():
    scheme = PartitionScheme(0, 6, 1, 1)
    times = scheme.frame_times(0)
    assert torch.allclose(times, torch.tensor([5, 4, 3, 2, 1, 0], dtype=torch.float64) / 6)


def test_frame_times_stay_in_the_band_of_their_stage():
    scheme = PartitionScheme(0, 4, 2, 3)
    for m in range(3):
        t = scheme.frame_times(m).view(4, 2)  # (N, c) oldest first
        for k in range(4):
            p = 3 - k
            assert torch.all(t[k] == t[k, 0])
            assert p / 4 <= t[k, 0] < (p + 1) / 4


@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
def test_training_times_per_chunk_ranges(scheme):
    g = torch.Generator().manual_seed(0)
    t = sample_chunk_times(scheme, 512, g)
    k, n, c = scheme.ref_frames, scheme.chunks, scheme.chunk_size
    assert t.shape == (512, scheme.buffer_frames)
    assert torch.all(t[:, :k] == 1)
    chunks = t[:, k:].view(512, n, c)
    assert torch.all(chunks == chunks[:, :, :1])  # shared within a chunk
    for idx in range(n):
        p = n - 1 - idx  # position from the noisy end
        lo, hi = chunks[:, idx, 0].min(), chunks[:, idx, 0].max()
        assert p / n <= lo and hi < (p + 1) / n
        # and it really spreads over the band
        assert hi - lo > 0.8 / n


def test_chunk_size_choices_include_uniform():
    assert chunk_size_choices(16) == [1, 2, 4, 8, 16]
    assert chunk_size_choices(12) == [1, 2, 4, 12]
    assert chunk_size_choices(10, ref_frames=2) == [1, 2, 4, 8]


def test_mixed_sampler_draws_every_size_with_its_own_bands():
    g = torch.Generator().manual_seed(1)
    times, sizes = sample_mixed_times(16, 400, generator=g)
    assert set(sizes.tolist()) == {1, 2, 4, 8, 16}
    for row, c in zip(times, sizes.tolist(), strict=True):
        n = 16 // c
        chunks = row.view(n, c)
        assert torch.all(chunks == chunks[:, :1])
        stage = torch.floor(chunks[:, 0] * n)
        assert stage.tolist() == list(range(n - 1, -1, -1))
    with pytest.raises(ValueError, match="do not divide"):
        sample_mixed_times(16, 1, chunk_sizes=[3])


def test_bad_scheme_is_refused_with_values():
    with pytest.raises(ValueError, match="N=0"):
        PartitionScheme(0, 0, 1, 1)


@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
def test_a_shortened_buffer_is_the_clean_end_of_the_full_one(scheme):
    k, c = scheme.ref_frames, scheme.chunk_size
    for stages in range(1, scheme.chunks + 1):
        for m in range(scheme.micro_steps):
            full, short = buffer_steps(scheme, m), buffer_steps(scheme, m, stages)
            assert torch.equal(short[:k], full[:k])
            assert torch.equal(short[k:], full[k : k + stages * c])  # the oldest chunks
    with pytest.raises(ValueError, match="stages"):
        buffer_steps(scheme, 0, scheme.chunks + 1)


@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_micro_steps_tile_the_stage_a_one_step_student_crosses(scheme, shift):
    s = scheme.micro_steps
    steps = [step_times(scheme, m, shift=shift) for m in range(s)]
    for (_, after), (before, _) in zip(steps[:-1], steps[1:], strict=True):
        assert torch.equal(after, before)  # each micro step starts where the last ended
    student = PartitionScheme(scheme.ref_frames, scheme.chunks, scheme.chunk_size, 1)
    start, end = step_times(student, 0, shift=shift)
    assert torch.allclose(steps[0][0], start) and torch.allclose(steps[-1][1], end)
    assert torch.all(start[: scheme.ref_frames] == 1) and torch.all(end >= start)
