"""The pacer as pure functions over a fake clock, plus a short run of PacedOutput."""

import dataclasses
import threading

import numpy as np
import pytest

from streamdit_live.pacer import (
    PacedOutput,
    PacerConfig,
    PacerEvent,
    buffered_seconds,
    cushion_frames,
    drain,
    flush,
    hold_seconds,
    jitter_hold,
    lateness,
    new_pacer,
    next_wakeup,
    pull,
    push,
    restart_due,
)

FPS = 30.0
TICK = 1 / FPS


def run(state, bursts, ticks):
    """Feed `bursts` ({tick index: frames}) and pull once per tick; return (state, outputs)."""
    outputs = []
    for i in range(ticks):
        now = i * TICK + 1e-9
        if i in bursts:
            state = push(state, bursts[i], now)
        state, frame, event = pull(state, now)
        outputs.append((frame, event))
    return state, outputs


def test_config_is_checked():
    with pytest.raises(ValueError, match="fps"):
        PacerConfig(fps=0)
    with pytest.raises(ValueError, match="target_depth"):
        PacerConfig(fps=30, target_depth=10, max_depth=4)
    with pytest.raises(ValueError, match="min_hold_s"):
        PacerConfig(fps=30, min_hold_s=0.5, max_hold_s=0.1)
    with pytest.raises(ValueError, match="min_jitter_samples"):
        PacerConfig(fps=30, min_jitter_samples=100, jitter_window=48)


def test_nothing_happens_before_the_first_push_or_before_a_tick_is_due():
    state = new_pacer(PacerConfig(fps=FPS))
    assert pull(state, 5.0) == (state, None, PacerEvent.WAIT)
    assert next_wakeup(state) is None
    state = push(state, ["a", "b"], 1.0)
    assert next_wakeup(state) == 1.0
    state, frame, event = pull(state, 1.0)
    assert (frame, event) == ("a", PacerEvent.EMITTED)
    assert pull(state, 1.0 + TICK / 2)[2] is PacerEvent.WAIT  # the next tick is not due yet
    assert next_wakeup(state) == pytest.approx(1.0 + TICK)


def test_steady_input_passes_through_in_order():
    state = new_pacer(PacerConfig(fps=FPS, target_depth=1))
    state, outputs = run(state, {i: [i] for i in range(60)}, 60)
    assert [f for f, _ in outputs] == list(range(60))
    assert {e for _, e in outputs} == {PacerEvent.EMITTED}
    assert (state.repeated, state.dropped, state.underruns) == (0, 0, 0)


def test_bursts_at_the_output_rate_become_one_frame_per_tick():
    # A chunk of 8 frames every 8 ticks, like an engine emitting a chunk per model call.
    bursts = {k * 8: list(range(k * 8, k * 8 + 8)) for k in range(10)}
    state = new_pacer(PacerConfig(fps=FPS, target_depth=2))
    state, outputs = run(state, bursts, 80)
    assert [f for f, _ in outputs] == list(range(80))
    assert state.repeated == 0 and state.dropped == 0
    assert state.input_rate == pytest.approx(FPS)


def test_slow_bursty_input_is_spread_evenly_not_flashed_then_frozen():
    # 12 fps input arriving as bursts of 4 frames every 10 ticks (1/3 s), output at 30 fps.
    bursts = {k * 10: list(range(k * 4, k * 4 + 4)) for k in range(30)}
    state = new_pacer(PacerConfig(fps=FPS, target_depth=2))
    state, outputs = run(state, bursts, 300)
    assert state.input_rate == pytest.approx(12.0)
    new_ticks = [i for i, (_, e) in enumerate(outputs) if e is PacerEvent.EMITTED]
    frames = [outputs[i][0] for i in new_ticks]
    assert frames == sorted(frames) and len(set(frames)) == len(frames)  # in order, no repeats
    late = [b - a for a, b in zip(new_ticks[40:], new_ticks[41:], strict=False)]
    # Once the rate is measured, a new frame every 2 or 3 ticks (30/12 = 2.5), never a freeze.
    assert set(late) <= {2, 3}, late
    assert all(e in (PacerEvent.EMITTED, PacerEvent.REPEATED) for _, e in outputs[1:])


def test_underrun_repeats_the_last_frame_then_primes_again():
    state = new_pacer(PacerConfig(fps=FPS, target_depth=2))
    state, outputs = run(state, {0: ["a", "b"]}, 5)
    assert outputs[:2] == [("a", PacerEvent.EMITTED), ("b", PacerEvent.EMITTED)]
    assert outputs[2:] == [("b", PacerEvent.REPEATED)] * 3
    assert state.underruns == 1 and state.priming
    state = push(state, ["c"], 5 * TICK + 1e-6)  # below target depth: keep holding "b"
    state, frame, event = pull(state, 5 * TICK + 1e-6)
    assert (frame, event) == ("b", PacerEvent.REPEATED)
    state = push(state, ["d"], 6 * TICK + 1e-6)
    state, frame, event = pull(state, 6 * TICK + 1e-6)
    assert (frame, event) == ("c", PacerEvent.EMITTED)


def test_push_over_max_depth_drops_the_oldest():
    state = new_pacer(PacerConfig(fps=FPS, target_depth=2, max_depth=4))
    state = push(state, list(range(10)), 0.0)
    assert state.buffer == (6, 7, 8, 9) and state.dropped == 6


def test_standing_surplus_is_trimmed_to_the_target_depth():
    # One frame per tick, but an extra burst of 12 early: without trimming, 12 frames of
    # latency would stay forever because input and output rates match.
    bursts = {i: [i] for i in range(200)}
    bursts[3] = [3, *[f"x{k}" for k in range(12)]]
    cfg = PacerConfig(fps=FPS, target_depth=2, window_s=1.0)
    state, outputs = run(new_pacer(cfg), bursts, 200)
    events = [e for _, e in outputs]
    assert PacerEvent.DROPPED in events
    assert state.depth <= cfg.target_depth + 1
    assert buffered_seconds(state) <= (cfg.target_depth + 1) / FPS
    shown = [f for f, e in outputs if e in (PacerEvent.EMITTED, PacerEvent.DROPPED)]
    ints = [f for f in shown if isinstance(f, int)]
    assert ints == sorted(ints)  # dropping never reorders


def test_flush_forgets_buffered_frames():
    state = new_pacer(PacerConfig(fps=FPS, target_depth=1))
    state = push(state, ["old1", "old2", "old3"], 0.0)
    state, frame, _ = pull(state, 0.0)
    assert frame == "old1"
    flushed = flush(state)
    assert flushed.depth == 0 and flushed.dropped == 2
    assert pull(flushed, TICK)[1:] == (None, PacerEvent.EMPTY)  # no stale frame follows
    kept = flush(state, keep_last=True)
    assert pull(kept, TICK)[1:] == ("old1", PacerEvent.REPEATED)
    fresh = push(flushed, ["new"], 2 * TICK)
    assert pull(fresh, 2 * TICK)[1:] == ("new", PacerEvent.EMITTED)


def test_a_restart_repeats_the_last_frame_on_every_tick_until_the_new_stream():
    """A reset while paused used to flush the last frame too: the outputs got nothing at all
    until unpause (a 15 s hole in a recording)."""
    state = new_pacer(PacerConfig(fps=FPS, target_depth=2))
    state, outputs = run(state, {0: ["a", "b"]}, 3)  # shows a, b, then holds b (paused)
    restart = flush(state, keep_last=True)
    ticks = [pull(restart, (3 + i) * TICK + 1e-9) for i in range(60)]  # 2 s, nothing new
    restart = ticks[-1][0]
    seen = [(frame, event) for _, frame, event in ticks]
    assert seen == [("b", PacerEvent.REPEATED)] * 60  # a frame on every tick, never a hole
    # The new stream's first burst comes 2 s after the last push: that gap is the restart,
    # not slow input, so its frames play at the full rate instead of being spread out.
    now = 63 * TICK + 1e-9
    restart = push(restart, ["n1", "n2", "n3", "n4"], now)
    assert restart.input_rate is None or restart.input_rate >= 0.9 * FPS
    shown = []
    for i in range(4):
        restart, frame, _ = pull(restart, now + i * TICK)
        shown.append(frame)
    assert shown == ["n1", "n2", "n3", "n4"]


def test_restarts_are_coalesced_to_one_per_chunk_period_and_each_stream_shows_a_chunk():
    period, hold = 4 / 24, 3.0
    assert restart_due(None, None, period, hold) == float("-inf")  # never restarted: now
    # Emitted its first chunk at 10.5: it plays for one chunk period before the next restart.
    assert restart_due(10.0, 10.5, period, hold) == pytest.approx(10.5 + period)
    # A first chunk that comes at once still leaves a chunk period between two restarts.
    assert restart_due(10.0, 10.0, period, hold) == pytest.approx(10.0 + period)
    # Not emitted yet (video mode gathers input first): it gets up to `hold` to do so.
    assert restart_due(10.0, None, period, hold) == pytest.approx(13.0)
    assert restart_due(10.0, None, 5.0, hold) == pytest.approx(15.0)  # never under a period


def test_a_restart_storm_keeps_every_tick_and_still_shows_new_frames():
    """The pacer and the coalescing rule together, on a fake clock: restarts are asked for
    on every tick (a strength fader swept over OSC); the engine's stream needs 0.5 s from a
    restart to its first chunk of 4 frames. Before, the output stopped while the storm
    lasted."""
    fps, chunk, startup = 24.0, 4, 0.5
    period = chunk / fps
    state = new_pacer(PacerConfig(fps=fps, target_depth=2))
    state = push(state, ["start"] * 2, 0.0)
    restarted, first, restarts = 0.0, 0.0, 0
    frames, new_at = [], []
    for i in range(int(10 * fps)):  # 10 s of storm, one tick (and one request) at a time
        now = i / fps + 1e-9
        if now >= restart_due(restarted, first, period, 3.0):
            restarted, first, restarts = now, None, restarts + 1
            state = flush(state, keep_last=True)
        if first is None and now >= restarted + startup:
            first = now
            state = push(state, [f"r{restarts}.{k}" for k in range(chunk)], now)
        state, frame, event = pull(state, now)
        frames.append(frame)
        if event is PacerEvent.EMITTED:
            new_at.append(now)
    assert None not in frames  # a frame on every tick
    assert restarts <= 10 / period  # at most one restart per chunk period
    assert len(new_at) >= 0.8 * 10 / (startup + period) * 2  # new frames all along
    assert max(b - a for a, b in zip(new_at, new_at[1:], strict=False)) < 2 * (startup + period)


def test_a_stalled_caller_skips_missed_ticks_instead_of_bursting():
    state = push(new_pacer(PacerConfig(fps=FPS, target_depth=1)), list(range(10)), 0.0)
    state, _, _ = pull(state, 0.0)
    state, frame, _ = pull(state, 1.0)  # 30 ticks late
    assert frame == 1
    assert pull(state, 1.0)[2] is PacerEvent.WAIT
    assert next_wakeup(state) == pytest.approx(1.0 + TICK)


class Recorder:
    def __init__(self, want: int) -> None:
        self.frames: list[np.ndarray] = []
        self.done = threading.Event()
        self.want = want

    def write(self, frame: np.ndarray) -> None:
        self.frames.append(frame)
        if len(self.frames) >= self.want:
            self.done.set()


def test_paced_output_writes_a_burst_in_order_on_a_real_clock():
    recorder = Recorder(want=12)
    events = []
    frames = [np.full((2, 2, 3), i, np.uint8) for i in range(10)]
    config = PacerConfig(fps=200.0, target_depth=2)
    with PacedOutput(recorder, config, on_emit=lambda item, ev, now: events.append(ev)) as out:
        out.push(frames)
        assert recorder.done.wait(5.0), "the paced output stalled"
    values = [int(f[0, 0, 0]) for f in recorder.frames]
    assert values[:10] == list(range(10)) and values[10:12] == [9, 9]  # then repeats the last
    assert events[:10] == [PacerEvent.EMITTED] * 10 and events[10] is PacerEvent.REPEATED


def test_paced_bursts_into_a_real_recording(tmp_path):
    import cv2

    from streamdit_live.sinks import SinkSet, open_sink
    from streamdit_live.sources import demo_frame

    path = str(tmp_path / "paced.avi")
    emitted = threading.Event()
    new_frames = []

    def on_emit(item, event, now):
        if event is PacerEvent.EMITTED:
            new_frames.append(item)
            if len(new_frames) == 20:
                emitted.set()

    with SinkSet([open_sink(f"file:{path}", 48, 32, 100.0)]) as outputs:
        with PacedOutput(outputs, PacerConfig(fps=100.0, target_depth=2), on_emit=on_emit) as out:
            for k in range(4):  # four bursts of five frames, as an engine emits chunks
                out.push([demo_frame(5 * k + i, 48, 32) for i in range(5)])
            assert emitted.wait(5.0), "the paced output stalled"
        written = outputs.sinks[0].frames_written
    cap = cv2.VideoCapture(path)
    count = 0
    while count < 10_000 and cap.read()[0]:
        count += 1
    cap.release()
    assert written >= 20 and count == written  # every paced tick reached the file


def test_drain_takes_every_buffered_frame_at_once():
    state = push(new_pacer(PacerConfig(fps=FPS)), [1, 2, 3, 4, 5], 0.0)
    state, frame, _ = pull(state, 0.0)
    assert frame == 1
    state, rest = drain(state)  # no tick is due: the drain does not wait for one
    assert rest == (2, 3, 4, 5)
    assert (state.depth, state.last, state.emitted, state.dropped) == (0, 5, 5, 0)
    assert drain(state) == (state, ())


def stopped_clock() -> float:
    """A clock that never moves: after the first tick no other one is ever due."""
    return 0.0


def test_a_clean_close_writes_the_buffered_frames_without_waiting_for_ticks():
    """A timed stop or Ctrl-C used to drop what was still buffered (2 frames plus a chunk),
    so recordings lost their last fraction of a second."""
    recorder = Recorder(want=10)
    out = PacedOutput(recorder, PacerConfig(fps=0.001), clock=stopped_clock)  # 1000 s ticks
    with out:
        out.push(list(range(10)))
    assert recorder.frames == list(range(10))
    assert out.state.depth == 0 and not out.alive


def test_leaving_on_an_error_does_not_drain():
    recorder = Recorder(want=10)
    out = PacedOutput(recorder, PacerConfig(fps=0.001), clock=stopped_clock)
    with pytest.raises(RuntimeError), out:
        out.push(list(range(10)))
        raise RuntimeError("the engine stopped")
    assert len(recorder.frames) <= 1  # at most the first tick's frame
    assert out.state.depth >= 9


class BlockingWriter:
    """A writer that stays inside `write` until the test releases it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, frame: object) -> None:
        self.entered.set()
        assert self.release.wait(5.0), "the test never released the writer"


def test_close_says_so_while_a_write_is_still_in_progress():
    """close() used to return after 2 s even mid-write, and the sinks were closed under it."""
    writer = BlockingWriter()
    out = PacedOutput(writer, PacerConfig(fps=FPS, target_depth=1)).start()
    out.push([1])
    assert writer.entered.wait(5.0), "the paced output never wrote"
    assert out.close(timeout=0.01) is False and out.alive  # still inside the write
    writer.release.set()
    assert out.close() is True and not out.alive


CHUNK_GAP = 4 / 24  # a chunk of 4 frames at 24 fps


def test_lateness_is_measured_against_the_median_frame_period():
    gaps = [(CHUNK_GAP, 4)] * 8 + [(CHUNK_GAP + 0.05, 4), (CHUNK_GAP - 0.05, 4)]
    late = lateness(gaps)
    assert late[:8] == pytest.approx([0.0] * 8, abs=1e-9)
    assert late[8:] == pytest.approx([0.05, -0.05])
    # A stall, then the two chunks it held back in one burst: the median period stays the
    # chunk's, so only the stall counts as late and the burst as early.
    stalled = [(CHUNK_GAP, 4)] * 8 + [(3 * CHUNK_GAP, 4), (1e-3, 8)]
    assert lateness(stalled)[8:] == pytest.approx([2 * CHUNK_GAP, 1e-3 - 2 * CHUNK_GAP])
    assert lateness([]) == []


def test_jitter_hold_covers_the_late_bursts_between_a_floor_and_a_ceiling():
    steady = [(CHUNK_GAP, 4)] * 40
    assert jitter_hold(steady, 95, 0.01, 0.25) == pytest.approx(0.01)  # the floor
    # Every fifth chunk 60 ms late (and the next one early by as much): the 95th
    # percentile covers them; the 50th does not.
    jittery = [(CHUNK_GAP + (0.06 if i % 5 == 0 else 0.0), 4) for i in range(40)]
    assert jitter_hold(jittery, 95, 0.01, 0.25) == pytest.approx(0.06)
    assert jitter_hold(jittery, 50, 0.01, 0.25) == pytest.approx(0.01)
    # One stall of a second in the window is beyond the 95th percentile of 40 bursts, and
    # two a second late are clamped to the ceiling.
    assert jitter_hold([*steady[:39], (1.0, 4)], 95, 0.01, 0.25) == pytest.approx(0.01)
    stalls = [(1.0, 4) if i % 10 == 0 else (CHUNK_GAP, 4) for i in range(40)]
    assert jitter_hold(stalls, 95, 0.01, 0.25) == pytest.approx(0.25)
    assert jitter_hold([], 95, 0.01, 0.25) == pytest.approx(0.01)


def chunks_at(times, size=4):
    """A push of `size` frames at each of `times`; frames are their own push time."""
    return [(t, [t] * size) for t in times]


def play(config, pushes, until):
    """Run pushes (time, frames) and one pull per tick until `until`; frames are their
    arrival times, so a new frame's latency through the pacer is tick - frame."""
    state, period = new_pacer(config), 1 / config.fps
    pushes, ticks, out = sorted(pushes, key=lambda p: p[0]), 0, []
    i = 0
    while ticks * period < until:
        now = ticks * period + 1e-9
        while i < len(pushes) and pushes[i][0] <= now:
            state = push(state, pushes[i][1], pushes[i][0])
            i += 1
        state, frame, event = pull(state, now)
        out.append((now, frame, event))
        ticks += 1
    return state, out


def test_the_cushion_follows_the_measured_jitter():
    cfg = PacerConfig(fps=24.0, target_depth=2)
    steady = [k * CHUNK_GAP for k in range(60)]
    state, _ = play(cfg, chunks_at(steady), 10.0)
    assert hold_seconds(state) == pytest.approx(cfg.min_hold_s)
    assert cushion_frames(state) == 1  # one frame, not the fixed two
    late = [t + (0.1 if k % 4 == 1 else 0.0) for k, t in enumerate(steady)]
    state, _ = play(cfg, chunks_at(late), 10.0)
    assert hold_seconds(state) == pytest.approx(0.1, abs=1e-6)
    assert cushion_frames(state) == 3  # 100 ms at 24 fps
    fixed = PacerConfig(fps=24.0, target_depth=2, adaptive=False)
    state, _ = play(fixed, chunks_at(late), 10.0)
    assert (hold_seconds(state), cushion_frames(state)) == (0.0, 2)
    first = new_pacer(cfg)  # nothing measured yet: the fixed target
    assert (hold_seconds(first), cushion_frames(first)) == (0.0, 2)


def test_after_a_stall_and_its_burst_only_the_measured_jitter_stays_as_latency():
    """The engine stalls for half a second, then its held-back chunks come at once. The
    surplus is trimmed down to the cushion: one frame on a steady input where the fixed
    pacer kept two. Every tick still shows a frame, new frames stay in order, and the
    stall's ticks are counted as repeats."""
    times = [k * CHUNK_GAP for k in range(120)]
    times = [t if not 30 <= k < 33 else 33 * CHUNK_GAP for k, t in enumerate(times)]
    results = {}
    for adaptive in (False, True):
        cfg = PacerConfig(fps=24.0, target_depth=2, adaptive=adaptive, window_s=1.0)
        state, out = play(cfg, chunks_at(times), 20.0)
        shown = [(now, f) for now, f, e in out if e in (PacerEvent.EMITTED, PacerEvent.DROPPED)]
        assert [f for _, f in shown] == sorted(f for _, f in shown)
        assert all(f is not None for _, f, _ in out[1:])
        assert state.repeated == sum(e is PacerEvent.REPEATED for _, _, e in out)
        tail = [now - f for now, f in shown if now > 15.0]  # long after the stall
        results[adaptive] = max(tail)
    tick = 1 / 24
    assert results[True] <= results[False] - tick + 1e-6  # one frame of latency less
    assert results[True] <= CHUNK_GAP + tick + 1e-6  # a chunk's spread plus one frame


def first_new_frame(state, start):
    """The time of the first tick at or after `start` that shows a new frame."""
    now = start
    while True:
        state, _, event = pull(state, now)
        if event is PacerEvent.EMITTED:
            return now
        now += 1 / 24


def test_priming_holds_the_measured_jitter_counted_from_when_the_burst_was_due():
    """With 60 ms of jitter measured, a restarted stream's first chunk is held 60 ms before
    it plays, so a late chunk after it finds a cushion; a chunk that ended an underrun by
    coming late has used the hold up and plays at the next tick."""
    cfg = PacerConfig(fps=24.0, target_depth=2)
    times = [k * CHUNK_GAP + (0.06 if k % 5 == 0 else 0.0) for k in range(40)]
    state, _ = play(cfg, chunks_at(times), 40 * CHUNK_GAP)
    assert hold_seconds(state) == pytest.approx(0.06, abs=1e-6)
    start = 41 * CHUNK_GAP
    restarted = push(flush(state, keep_last=True), ["a"] * 4, start)
    assert start + 0.06 <= first_new_frame(restarted, start) < start + 0.06 + 1 / 24 + 1e-6
    now = 40 * CHUNK_GAP
    while now < start + 0.5:  # the input stalls: the buffer runs dry, the last frame repeats
        state, _, _ = pull(state, now)
        now += 1 / 24
    assert state.priming and state.underruns == 1
    underrun = push(state, ["b"] * 4, now)
    assert first_new_frame(underrun, now) == now
    fixed = dataclasses.replace(restarted, config=dataclasses.replace(cfg, adaptive=False))
    assert first_new_frame(fixed, start) == start  # the fixed pacer does not hold


def test_pushes_a_fraction_of_a_millisecond_apart_are_rated_as_one_burst():
    """Two chunks pushed 0.1 ms apart used to be rated at 40,000 frames a second, a rate
    that took a hundred pushes to decay."""
    state = new_pacer(PacerConfig(fps=24.0))
    for k in range(10):
        state = push(state, [k] * 4, k * CHUNK_GAP)
    state = push(state, ["x"] * 4, 10 * CHUNK_GAP - 1e-4)
    state = push(state, ["y"] * 4, 10 * CHUNK_GAP)
    assert state.input_rate == pytest.approx(24.0, rel=0.25)
    assert len(state.gaps) == 10  # the two count as one burst of 8 frames


def test_no_hold_while_the_input_is_a_little_slower_than_the_output():
    """Chunks at 22.5 fps into a 24 fps output run the buffer dry on every chunk whatever
    is held, so holding their jitter would only add latency: the pacer holds nothing."""
    gap = 4 / 22.5
    times = [k * gap + (0.05 if k % 4 == 1 else 0.0) for k in range(60)]
    state, out = play(PacerConfig(fps=24.0), chunks_at(times), 60 * gap)
    assert hold_seconds(state) == 0.0
    assert state.underruns > 0  # the buffer does run dry
