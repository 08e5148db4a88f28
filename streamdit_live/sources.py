"""Frame sources: webcam, screen, video file and a built-in demo, each on its own thread.

A `Source` owns one capture thread. The thread opens a device through an *opener* (a small
seam: tests inject failing captures through it), grabs frames, fits them to the requested
size and puts them in a latest-wins slot, so a slow consumer always gets the newest frame
and never a backlog. When the device fails or ends, the source logs one sentence, closes
it and reopens it with capped exponential backoff; readers meanwhile keep getting the last
good frame, so the stream goes on. That is for a source that worked: at start-up one that
gives no frame is reported at once (`Source.wait_first_frame`, `start_problem`), and its
retries until then log at debug level only, so that one sentence is all the user sees.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple, Protocol

import cv2
import numpy as np

from streamdit_live.frames import fit_frame
from streamdit_live.slot import LatestSlot

log = logging.getLogger(__name__)


class SourceKind(str, Enum):
    """The built-in sources. A member equals its name, so a registered source of another
    kind (a plain string such as "ndi") compares the same way."""

    WEBCAM = "webcam"
    SCREEN = "screen"
    FILE = "file"
    DEMO = "demo"


@dataclass(frozen=True)
class SourceSpec:
    kind: SourceKind | str
    device: int | str = 0  # webcam: an index or a device path
    monitor: int = 1  # screen: mss numbering, 1 = first monitor, 0 = all monitors together
    region: tuple[int, int, int, int] | None = None  # screen: x, y, width, height
    path: str = ""  # file

    def __str__(self) -> str:
        if self.kind is SourceKind.WEBCAM:
            return f"webcam:{self.device}"
        if self.kind is SourceKind.SCREEN:
            return (
                f"screen:{','.join(map(str, self.region))}"
                if self.region
                else f"screen:{self.monitor}"
            )
        if self.kind is SourceKind.FILE:
            return f"file:{self.path}"
        return getattr(self.kind, "value", self.kind)


def parse_source(spec: str) -> SourceSpec:
    """Parse `webcam[:N|:PATH]`, `screen[:N|:x,y,w,h]`, `file:PATH`, `demo` or any other
    registered kind, through `SOURCE_TYPES`."""
    name, sep, arg = spec.strip().partition(":")
    source = SOURCE_TYPES.get(name.lower())
    if source is None or (sep and not arg):
        raise _bad_source(spec)
    return source.parse(arg, spec)


def source_forms() -> str:
    """Every registered source spec form, for help texts and error messages."""
    forms = [form for t in SOURCE_TYPES.values() for form in t.forms]
    return f"{', '.join(forms[:-1])} or {forms[-1]}"


def _bad_source(spec: str) -> ValueError:
    return ValueError(f"Unknown source {spec!r}: use {source_forms()}.")


def _parse_webcam(arg: str, spec: str) -> SourceSpec:
    if not arg:
        return SourceSpec(SourceKind.WEBCAM)
    return SourceSpec(SourceKind.WEBCAM, device=int(arg) if arg.isdigit() else arg)


def _parse_screen(arg: str, spec: str) -> SourceSpec:
    if not arg:
        return SourceSpec(SourceKind.SCREEN)
    if arg.isdigit():
        return SourceSpec(SourceKind.SCREEN, monitor=int(arg))
    parts = arg.split(",")
    if len(parts) != 4 or not all(p.strip().lstrip("-").isdigit() for p in parts):
        raise _bad_source(spec)
    x, y, w, h = (int(p) for p in parts)
    if w <= 0 or h <= 0:
        raise ValueError(f"Source {spec!r}: the region's width and height must be positive.")
    return SourceSpec(SourceKind.SCREEN, region=(x, y, w, h))


def _parse_file(arg: str, spec: str) -> SourceSpec:
    if not arg:
        raise _bad_source(spec)
    return SourceSpec(SourceKind.FILE, path=arg)


def _parse_demo(arg: str, spec: str) -> SourceSpec:
    if arg:
        raise _bad_source(spec)
    return SourceSpec(SourceKind.DEMO)


class Captured(NamedTuple):
    frame: np.ndarray  # uint8 (height, width, 3) RGB
    t_capture: float  # the source clock (time.monotonic by default) when it was grabbed


@dataclass(frozen=True)
class SourceHealth:
    name: str
    frames: int  # frames captured since the source started
    failures: int  # failed opens plus failed or ended captures
    reopens: int  # successful opens after the first
    dropped: int  # frames replaced in the slot before anyone read them
    connected: bool  # a device is open right now
    last_error: str | None


@dataclass(frozen=True)
class Backoff:
    initial_s: float = 0.5
    factor: float = 2.0
    max_s: float = 10.0


def backoff_delay(failures: int, policy: Backoff = Backoff()) -> float:
    """Seconds to wait before reopening after `failures` consecutive failures (>= 1)."""
    exponent = min(max(0, failures - 1), 64)  # bounded: a huge power would overflow a float
    return min(policy.max_s, policy.initial_s * policy.factor**exponent)


# At start-up a source counts as not working after this long, or this many failed opens or
# grabs (with the default backoff the third comes ~1.5 s in); a slow webcam takes seconds.
START_TIMEOUT_S, START_FAILURES = 10.0, 3


def start_problem(health: SourceHealth) -> str | None:
    """Why a source gave no frame at start-up (one sentence), or None if it gave one."""
    if health.frames > 0:
        return None
    why = f" ({health.last_error.rstrip('.')})" if health.last_error else ""
    return (
        f"No frame came from {health.name} at start-up{why}; check it or pick another "
        "source with --source."
    )


class CaptureError(Exception):
    """A device failed or ended; the message is one sentence for the user."""


class Capture(Protocol):
    """One opened device, used only by the capture thread that opened it."""

    paced: bool  # grab() blocks at the device's own rate (a webcam); otherwise the Source paces
    fps: float | None  # the device's native rate if known (a file's fps)

    def grab(self) -> np.ndarray:
        """The next RGB uint8 (H, W, 3) frame of any size; raise CaptureError when it fails."""
        ...

    def close(self) -> None: ...


def demo_frame(index: int, width: int, height: int, fps: float = 30.0) -> np.ndarray:
    """Frame `index` of the built-in demo: drifting color waves and orbiting discs.

    A pure function of its arguments, so the demo is identical on every run. Drawn at most
    320 pixels wide and scaled up: smooth shapes lose nothing and 720p stays cheap.
    """
    scale = min(1.0, 320 / max(width, height))
    if scale < 1.0:
        small = demo_frame(index, max(1, round(width * scale)), max(1, round(height * scale)), fps)
        return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    t = index / fps
    y, x = np.ogrid[0:height, 0:width]
    u, v = x / max(1, width - 1), y / max(1, height - 1)  # (1, W), (H, 1) in [0, 1]
    red = 0.5 + 0.5 * np.sin(2 * math.pi * (u + 0.15 * t))
    green = 0.5 + 0.5 * np.sin(2 * math.pi * (v - 0.1 * t) + 1.0)
    blue = 0.5 + 0.5 * np.sin(2 * math.pi * (u + v + 0.05 * t) + 2.0)
    rgb = np.stack(np.broadcast_arrays(red, green, blue), axis=-1) * 0.6  # (H, W, 3)
    for k, color in enumerate(((1.0, 0.9, 0.2), (0.2, 1.0, 0.9), (1.0, 0.3, 0.8))):
        angle = 2 * math.pi * (0.2 * t + k / 3)
        cx, cy = 0.5 + 0.3 * math.cos(angle), 0.5 + 0.3 * math.sin(1.3 * angle)
        disc = (u - cx) ** 2 + (v - cy) ** 2 < (0.08 + 0.03 * k) ** 2  # (H, W)
        rgb[disc] = color
    return np.ascontiguousarray((rgb * 255).round().astype(np.uint8))


class DemoCapture:
    paced = False
    fps = None

    def __init__(self, width: int, height: int, fps: float) -> None:
        self._size, self._fps, self._index = (width, height), fps, 0

    def grab(self) -> np.ndarray:
        frame = demo_frame(self._index, *self._size, fps=self._fps)
        self._index += 1
        return frame

    def close(self) -> None:
        pass


class WebcamCapture:
    paced = True  # VideoCapture.read() waits for the camera's next frame
    fps = None

    def __init__(self, device: int | str, width: int, height: int, fps: float) -> None:
        self._device = device
        # A device path is a V4L2 node on Linux; everything else lets OpenCV pick its backend.
        api = cv2.CAP_V4L2 if str(device).startswith("/dev/video") else cv2.CAP_ANY
        self._cap = cv2.VideoCapture(device, api)
        if not self._cap.isOpened():
            self._cap.release()
            raise CaptureError(
                f"webcam {device} could not be opened: "
                "is it plugged in and not used by another app?"
            )
        # Requests only: the camera picks its nearest mode and the Source fits the frames.
        self._cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        self._cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        self._cap.set(cv2.CAP_PROP_FPS, fps)

    def grab(self) -> np.ndarray:
        ok, bgr = self._cap.read()
        if not ok or bgr is None:
            raise CaptureError(f"webcam {self._device} stopped sending frames: was it unplugged?")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        self._cap.release()


class ScreenCapture:
    paced = False
    fps = None

    def __init__(self, monitor: int, region: tuple[int, int, int, int] | None) -> None:
        import mss  # only screen capture needs it; it also needs a display on Linux

        factory = getattr(mss, "MSS", None) or mss.mss  # mss.MSS since 10.2, mss.mss before
        try:
            self._sct = factory()
            monitors = self._sct.monitors
        except Exception as e:
            raise CaptureError(
                f"screen capture could not start ({e}): is a display available (DISPLAY set)?"
            ) from e
        if region is not None:
            x, y, w, h = region
            self._box = {"left": x, "top": y, "width": w, "height": h}
            self._name = f"screen region {x},{y},{w},{h}"
        elif 0 <= monitor < len(monitors):
            self._box = dict(monitors[monitor])
            self._name = f"screen {monitor}"
        else:
            self._sct.close()
            raise CaptureError(
                f"screen {monitor} does not exist: this display has monitors 1 to "
                f"{len(monitors) - 1} (0 captures all of them together)."
            )

    def grab(self) -> np.ndarray:
        try:
            bgra = np.asarray(self._sct.grab(self._box))  # (H, W, 4)
        except Exception as e:
            raise CaptureError(f"{self._name} could not be captured: {e}") from e
        return cv2.cvtColor(bgra, cv2.COLOR_BGRA2RGB)

    def close(self) -> None:
        self._sct.close()


class FileCapture:
    paced = False

    def __init__(self, path: str) -> None:
        self._path = path
        self._cap = self._open()
        native = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = native if 0 < native <= 240 else None  # some containers report 0 or 1000
        self._frames_this_pass = 0

    def _open(self) -> cv2.VideoCapture:
        cap = cv2.VideoCapture(self._path)
        if not cap.isOpened():
            cap.release()
            raise CaptureError(
                f"file {self._path} could not be opened: does it exist and is it a video?"
            )
        return cap

    def grab(self) -> np.ndarray:
        ok, bgr = self._cap.read()
        if not ok:
            if self._frames_this_pass == 0:
                raise CaptureError(f"file {self._path} has no readable frames.")
            # The end: loop by reopening, which also picks up a file replaced meanwhile.
            self._cap.release()
            self._cap = self._open()
            self._frames_this_pass = 0
            ok, bgr = self._cap.read()
            if not ok:
                raise CaptureError(f"file {self._path} could not be read again from the start.")
        self._frames_this_pass += 1
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        self._cap.release()


def _close_quietly(capture: Capture) -> None:
    try:
        capture.close()
    except Exception:  # the device is already broken; its close error adds nothing
        log.debug("closing a failed capture raised", exc_info=True)


class Source:
    """Captures on a daemon thread into a latest-wins slot; a context manager.

    `opener` opens the device (it runs on the capture thread, as some devices require) and
    may raise; every failure is logged and retried with `backoff`.
    """

    def __init__(
        self,
        opener: Callable[[], Capture],
        *,
        name: str,
        width: int = 256,
        height: int = 256,
        fps: float = 30.0,
        backoff: Backoff = Backoff(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if width <= 0 or height <= 0 or not fps > 0:
            raise ValueError(
                f"Source {name}: size and fps must be positive, got {width}x{height} at {fps} fps."
            )
        self.name, self.width, self.height, self.fps = name, width, height, fps
        self._opener, self._backoff, self._clock = opener, backoff, clock
        self._slot: LatestSlot[Captured] = LatestSlot()
        self._stop = threading.Event()
        # Guards the fields below; notified on the first frame and on every failure.
        self._lock = threading.Condition()
        self._last: Captured | None = None
        self._frames = self._failures = self._reopens = 0
        self._connected = self._started = False
        self._last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"source {name}", daemon=True)

    def start(self) -> Source:
        """Start capturing; calling it again does nothing."""
        with self._lock:
            if not self._started and not self._stop.is_set():
                self._started = True
                self._thread.start()
        return self

    def read(self, timeout: float = 1.0) -> Captured | None:
        """The newest frame not read yet, waiting up to `timeout` seconds for one.

        If none arrives in time (the device hiccups or is being reopened), the last good
        frame is returned again, with its original t_capture so callers can tell. None only
        before the first frame ever arrived.
        """
        item = self._slot.get(timeout)
        with self._lock:
            if item is not None:
                self._last = item
            return self._last

    def wait_first_frame(
        self, timeout: float = START_TIMEOUT_S, failures: int = START_FAILURES
    ) -> SourceHealth:
        """Block until the first frame, `failures` failed opens or grabs, or `timeout`
        seconds; return the health then (`start_problem` says whether it started)."""
        with self._lock:
            self._lock.wait_for(
                lambda: self._frames > 0 or self._failures >= failures or self._stop.is_set(),
                timeout,
            )
        return self.health()

    def health(self) -> SourceHealth:
        with self._lock:
            return SourceHealth(
                name=self.name,
                frames=self._frames,
                failures=self._failures,
                reopens=self._reopens,
                dropped=self._slot.dropped,
                connected=self._connected,
                last_error=self._last_error,
            )

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        self._slot.close()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> Source:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fail(self, error: Exception, failures: int) -> float:
        delay = backoff_delay(failures, self._backoff)
        message = (
            str(error) if isinstance(error, CaptureError) else f"{self.name} failed: {error!r}"
        )
        if not message.endswith((".", "?", "!")):
            message += "."
        with self._lock:
            self._failures += 1
            self._connected = False
            self._last_error = message
            started = self._frames > 0
            self._lock.notify_all()
        # Before the first frame, whoever waits on the source reports it (wait_first_frame).
        log.log(
            logging.WARNING if started else logging.DEBUG, "%s Reopening in %.1f s.", message, delay
        )
        return delay

    def _run(self) -> None:
        capture: Capture | None = None
        opened_before, streak, due = False, 0, 0.0
        try:
            while not self._stop.is_set():
                if capture is None:
                    try:
                        capture = self._opener()
                    except Exception as e:
                        streak += 1
                        self._stop.wait(self._fail(e, streak))
                        continue
                    with self._lock:
                        self._connected = True
                        self._reopens += int(opened_before)
                    opened_before, due = True, self._clock()
                try:
                    raw = capture.grab()
                    now = self._clock()
                    frame = fit_frame(raw, self.width, self.height)
                except Exception as e:
                    _close_quietly(capture)
                    capture, streak = None, streak + 1
                    self._stop.wait(self._fail(e, streak))
                    continue
                streak = 0
                self._slot.put(Captured(frame, now))
                with self._lock:
                    self._frames += 1
                    if self._frames == 1:
                        self._lock.notify_all()
                if not capture.paced:
                    # Keep a steady cadence; after a stall, restart it instead of catching up.
                    due = max(due + 1.0 / (capture.fps or self.fps), now)
                    self._stop.wait(max(0.0, due - self._clock()))
        finally:
            if capture is not None:
                _close_quietly(capture)
            with self._lock:
                self._connected = False


def open_source(
    spec: str | SourceSpec,
    width: int = 256,
    height: int = 256,
    fps: float = 30.0,
    *,
    backoff: Backoff = Backoff(),
) -> Source:
    """Parse `spec`, then return a started Source that delivers (height, width, 3) frames.

    A missing file is refused at once (a typo should not retry forever); any other failure
    is retried in the background, and `Source.wait_first_frame` tells a caller at start-up
    whether the source works at all.
    """
    spec = parse_source(spec) if isinstance(spec, str) else spec
    kind = SOURCE_TYPES[getattr(spec.kind, "value", spec.kind)]
    opener = kind.opener(spec, width, height, fps)
    source = Source(opener, name=str(spec), width=width, height=height, fps=fps, backoff=backoff)
    return source.start()


def _file_opener(spec: SourceSpec, width: int, height: int, fps: float) -> Callable[[], Capture]:
    if not os.path.isfile(spec.path):  # a typo should not retry forever
        raise ValueError(f"Source file {spec.path!r} does not exist: check the path.")
    return lambda: FileCapture(spec.path)


@dataclass(frozen=True)
class SourceType:
    """One kind of source in the registry: how its spec reads and how it opens.

    A new source (NDI in, Spout in) is a module with its `Capture` and one `SourceType`,
    plus one line in `SOURCE_TYPES`.
    """

    name: str  # the spec's prefix, e.g. "webcam"
    forms: tuple[str, ...]  # the spec forms, for help and error messages
    parse: Callable[[str, str], SourceSpec]  # (text after "name:", whole spec) -> spec
    # (spec, width, height, fps) -> a function that opens the device (run on the capture
    # thread, and again on every reconnect); ValueError for a spec that can never work.
    opener: Callable[[SourceSpec, int, int, float], Callable[[], Capture]]


SOURCE_TYPES: dict[str, SourceType] = {
    t.name: t
    for t in (
        SourceType(
            "webcam",
            ("webcam", "webcam:N", "webcam:/dev/videoN"),
            _parse_webcam,
            lambda s, w, h, fps: lambda: WebcamCapture(s.device, w, h, fps),
        ),
        SourceType(
            "screen",
            ("screen", "screen:N", "screen:x,y,w,h"),
            _parse_screen,
            lambda s, w, h, fps: lambda: ScreenCapture(s.monitor, s.region),
        ),
        SourceType("file", ("file:PATH",), _parse_file, _file_opener),
        SourceType(
            "demo", ("demo",), _parse_demo, lambda s, w, h, fps: lambda: DemoCapture(w, h, fps)
        ),
    )
}
