"""Frame sinks: virtual camera, video file, preview window and an HTTP MJPEG stream.

Every sink takes uint8 RGB (H, W, 3) frames, fits them to the size it was opened with and
returns quickly: the window and MJPEG sinks hand frames to their own process or threads
through latest-wins buffers, so a stalled viewer never stalls the stream. `SinkSet` writes
to several sinks at once and drops a sink that fails or that the user closed, saying so in
one sentence; when none is left it says why (`SinkSet.ended`) and the run ends.

This module holds the output specs and their parsing, the virtual camera and file sinks, and
`open_sink`/`open_sinks`/`SinkSet`, and the output size: `scale_frame` fits the model's frames
to the one size every output of a run opens at (`--out-size`), once per frame in `SinkSet`
rather than once per sink. The base class lives in `sink_base`, the MJPEG server in
`mjpeg` and the preview window in `window`; all of them are re-exported here, so
`from streamdit_live.sinks import ...` reaches every sink.
"""

from __future__ import annotations

import logging
import os
import platform
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum

import cv2
import numpy as np

from streamdit_live.controls import Size
from streamdit_live.frames import check_frame, fit_frame, resize_frame
from streamdit_live.mjpeg import DEFAULT_MJPEG_PORT, MjpegSink
from streamdit_live.sink_base import Sink, SinkClosed, SinkUnavailable
from streamdit_live.window import WindowSink

log = logging.getLogger(__name__)

VIDEO_FOURCC = {".mp4": "mp4v", ".avi": "MJPG"}

# The size meeting apps and OBS take from a camera without rescaling it themselves; the
# outputs open at it whenever a virtual camera is among them and --out-size is not given.
VIRTUALCAM_SIZE = Size(1280, 720)
# Even sides: virtual cameras (I420/NV12) and video encoders subsample chroma 2x2.
OUT_SIZE_MIN, OUT_SIZE_MAX = 32, 4096


class OutputFit(Enum):
    """How a frame of another shape fills the output size, keeping its aspect ratio."""

    COVER = "cover"  # fill the whole output and crop the overflow, centered (a camera's look)
    LETTERBOX = "letterbox"  # show the whole frame, black bars on the short sides


def check_out_size(size: Size) -> Size:
    """Return `size` if every output can open at it, else raise ValueError (one sentence)."""
    for side in (size.width, size.height):
        if not OUT_SIZE_MIN <= side <= OUT_SIZE_MAX or side % 2:
            raise ValueError(
                f"the output size must be WxH with even sides from {OUT_SIZE_MIN} to "
                f"{OUT_SIZE_MAX}, such as 1280x720, got {str(size)!r}."
            )
    return size


def parse_out_size(text: str) -> Size:
    """Parse and check an output size written `WxH` (ValueError with one sentence)."""
    try:
        size = Size.parse(text.strip())
    except ValueError:
        raise ValueError(
            f"the output size must be WxH with even sides from {OUT_SIZE_MIN} to "
            f"{OUT_SIZE_MAX}, such as 1280x720, got {text!r}."
        ) from None
    return check_out_size(size)


def default_out_size(specs: Iterable[str | SinkSpec], model_size: Size) -> Size:
    """The output size when none is given: VIRTUALCAM_SIZE if any output is a virtual
    camera (meeting apps want a common camera size), else the model's own size."""
    parsed = [parse_sink(s) if isinstance(s, str) else s for s in specs]
    if any(spec.kind == SinkKind.VIRTUALCAM for spec in parsed):
        return VIRTUALCAM_SIZE
    return model_size


def scale_frame(
    frame: np.ndarray, width: int, height: int, fit: OutputFit = OutputFit.COVER
) -> np.ndarray:
    """Scale `frame` to exactly (width, height), keeping its aspect ratio.

    COVER crops the source to the target's aspect (centered) and then resizes once, so no
    pixel is scaled only to be thrown away; LETTERBOX resizes the whole frame to fit and
    centers it on black. A frame already at the size is returned as it is.
    """
    frame = check_frame(frame, "scale_frame")
    h, w = frame.shape[:2]
    if (w, h) == (width, height) or fit is OutputFit.COVER:
        return fit_frame(frame, width, height)
    scale = min(width / w, height / h)
    inner_w = min(width, max(1, round(w * scale)))
    inner_h = min(height, max(1, round(h * scale)))
    out = np.zeros((height, width, 3), np.uint8)  # calloc'd: ~0.02 ms at 1280x720
    top, left = (height - inner_h) // 2, (width - inner_w) // 2
    out[top : top + inner_h, left : left + inner_w] = resize_frame(frame, inner_w, inner_h)
    return out


def check_folder(path: str | os.PathLike[str], what: str) -> None:
    """Raise ValueError (one sentence) if the folder `path` would be written into is missing."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{what} {str(path)!r}: the folder {folder} does not exist.")


class SinkKind(str, Enum):
    """The built-in outputs. A member equals its name, so a registered output of another
    kind (a plain string such as "ndi") compares the same way."""

    VIRTUALCAM = "virtualcam"
    FILE = "file"
    WINDOW = "window"
    MJPEG = "mjpeg"


@dataclass(frozen=True)
class SinkSpec:
    kind: SinkKind | str
    path: str = ""  # file
    device: str | None = None  # virtualcam: e.g. /dev/video10; None picks any
    host: str = "127.0.0.1"  # mjpeg: loopback unless the user opens it
    port: int = DEFAULT_MJPEG_PORT  # mjpeg: 0 picks a free port

    def __str__(self) -> str:
        if self.kind is SinkKind.FILE:
            return f"file:{self.path}"
        if self.kind is SinkKind.MJPEG:
            return f"mjpeg:{self.host}:{self.port}"
        if self.kind is SinkKind.VIRTUALCAM and self.device:
            return f"virtualcam:{self.device}"
        return getattr(self.kind, "value", self.kind)


def parse_sink(spec: str) -> SinkSpec:
    """Parse an output spec (`virtualcam[:DEVICE]`, `file:PATH.mp4|.avi`, `window`,
    `mjpeg[:[HOST:]PORT]` or any other registered kind) through `OUTPUT_TYPES`."""
    name, sep, arg = spec.strip().partition(":")
    output = OUTPUT_TYPES.get(name.lower())
    if output is None or (sep and not arg):
        raise ValueError(f"Unknown output {spec!r}: use {sink_forms()}.")
    return output.parse(arg, spec)


def _bad_sink(spec: str) -> ValueError:
    return ValueError(f"Unknown output {spec!r}: use {sink_forms()}.")


def _parse_virtualcam(arg: str, spec: str) -> SinkSpec:
    return SinkSpec(SinkKind.VIRTUALCAM, device=arg or None)


def _parse_file(arg: str, spec: str) -> SinkSpec:
    if not arg:
        raise _bad_sink(spec)
    if os.path.splitext(arg)[1].lower() not in VIDEO_FOURCC:
        raise ValueError(f"Output {spec!r}: a recording must end in .mp4 or .avi.")
    return SinkSpec(SinkKind.FILE, path=arg)


def _parse_window(arg: str, spec: str) -> SinkSpec:
    if arg:
        raise _bad_sink(spec)
    return SinkSpec(SinkKind.WINDOW)


def _parse_mjpeg(arg: str, spec: str) -> SinkSpec:
    if not arg:
        return SinkSpec(SinkKind.MJPEG)
    host, _, port = arg.rpartition(":")
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"Output {spec!r}: the MJPEG port must be a number from 0 to 65535.")
    return SinkSpec(SinkKind.MJPEG, host=host or "127.0.0.1", port=int(port))


def virtualcam_help(system: str) -> str:
    """One sentence on getting a virtual camera driver on `system` (platform.system())."""
    if system == "Linux":
        return (
            "No virtual camera device was found: install v4l2loopback (the "
            "v4l2loopback-dkms package on Debian and Ubuntu) and load it with "
            "`sudo modprobe v4l2loopback devices=1 exclusive_caps=1`, then run again."
        )
    if system in ("Windows", "Darwin"):
        return (
            "No virtual camera was found: install OBS Studio 30 or newer and start its "
            "virtual camera once (Start Virtual Camera), then run again."
        )
    return f"No virtual camera backend exists for {system}: use mjpeg:PORT or file:PATH.mp4."


class VirtualCamSink(Sink):
    """pyvirtualcam in RGB; `backend` picks one pyvirtualcam backend (None tries them all)."""

    def __init__(
        self,
        width: int,
        height: int,
        fps: float,
        device: str | None = None,
        backend: str | None = None,
    ) -> None:
        super().__init__("virtualcam", width, height, fps)
        try:
            import pyvirtualcam

            self._cam = pyvirtualcam.Camera(
                width, height, fps, fmt=pyvirtualcam.PixelFormat.RGB, device=device, backend=backend
            )
        except Exception as e:
            log.debug("virtual camera backends failed: %s", e)
            raise SinkUnavailable(virtualcam_help(platform.system())) from e
        self.device = self._cam.device

    def _send(self, frame: np.ndarray) -> None:
        self._cam.send(frame)

    def _release(self) -> None:
        self._cam.close()


class FileSink(Sink):
    """A recording through cv2.VideoWriter: mp4 (MPEG-4 part 2) or avi (Motion JPEG).

    The container is finalized on close(); a finalizer also closes it at garbage collection
    and interpreter exit, so Ctrl-C still leaves a playable file. `abandon()` (a failed run)
    deletes the file when no frame was written to it.
    """

    def __init__(self, path: str, width: int, height: int, fps: float) -> None:
        super().__init__(f"file:{path}", width, height, fps)
        ext = os.path.splitext(path)[1].lower()
        if ext not in VIDEO_FOURCC:
            raise ValueError(f"Output file {path!r}: a recording must end in .mp4 or .avi.")
        check_folder(path, "Output file")
        fourcc = cv2.VideoWriter_fourcc(*VIDEO_FOURCC[ext])
        self.path = path
        self._writer = cv2.VideoWriter(path, fourcc, fps, (width, height))
        if not self._writer.isOpened():
            raise SinkUnavailable(
                f"Could not open {path} for writing: check the folder's permissions."
            )
        self._finalizer = weakref.finalize(self, self._writer.release)

    def _send(self, frame: np.ndarray) -> None:
        self._writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))

    def _release(self) -> None:
        self._finalizer()

    def abandon(self) -> None:
        self.close()
        if self.frames_written == 0:
            try:
                os.remove(self.path)
            except OSError as e:  # already gone, or not ours to delete
                log.debug("could not remove the empty recording %s: %s", self.path, e)
            else:
                log.info("Removed the empty recording %s.", self.path)


def open_sink(spec: str | SinkSpec, width: int = 256, height: int = 256, fps: float = 30.0) -> Sink:
    """Open one output; raises SinkUnavailable when it cannot run here (a one-sentence why)."""
    spec = parse_sink(spec) if isinstance(spec, str) else spec
    return OUTPUT_TYPES[getattr(spec.kind, "value", spec.kind)].open(spec, width, height, fps)


@dataclass(frozen=True)
class OutputType:
    """One kind of output in the registry: how its spec reads and how it opens.

    A new output (NDI, Spout, Syphon) is a module that defines its `Sink` and one
    `OutputType`, plus one line in `OUTPUT_TYPES`; the CLI, the session and the GUI find it
    there (`parse_sink`, `open_sink`, `sink_forms`).
    """

    name: str  # the spec's prefix, e.g. "mjpeg"
    forms: tuple[str, ...]  # the spec forms, for help and error messages
    parse: Callable[[str, str], SinkSpec]  # (text after "name:", whole spec) -> spec
    open: Callable[[SinkSpec, int, int, float], Sink]  # (spec, width, height, fps)


OUTPUT_TYPES: dict[str, OutputType] = {
    t.name: t
    for t in (
        OutputType(
            "virtualcam",
            ("virtualcam", "virtualcam:DEVICE"),
            _parse_virtualcam,
            lambda s, w, h, fps: VirtualCamSink(w, h, fps, device=s.device),
        ),
        OutputType(
            "file",
            ("file:PATH.mp4", "file:PATH.avi"),
            _parse_file,
            lambda s, w, h, fps: FileSink(s.path, w, h, fps),
        ),
        OutputType(
            "window", ("window",), _parse_window, lambda s, w, h, fps: WindowSink(w, h, fps)
        ),
        OutputType(
            "mjpeg",
            ("mjpeg", "mjpeg:PORT", "mjpeg:HOST:PORT"),
            _parse_mjpeg,
            lambda s, w, h, fps: MjpegSink(w, h, fps, host=s.host, port=s.port),
        ),
    )
}


def sink_forms() -> str:
    """Every registered output spec form, for help texts and error messages."""
    forms = [form for t in OUTPUT_TYPES.values() for form in t.forms]
    return f"{', '.join(forms[:-1])} or {forms[-1]}"


class SinkSet:
    """Writes each frame to several sinks; one that fails or is closed by the user is
    dropped (logged in one sentence while others remain). When the last one goes, `ended`
    says why in one sentence and `all_failed` whether it failed (rather than was closed).

    With a `size`, a frame is scaled to it once (`prepare`) before it goes to every sink;
    without one each sink fits the frame to its own size.
    """

    def __init__(
        self,
        sinks: Iterable[Sink] = (),
        size: Size | None = None,
        fit: OutputFit = OutputFit.COVER,
    ) -> None:
        self._lock = threading.Lock()
        self._sinks = list(sinks)
        self.size, self.fit = size, fit
        self.failed: list[str] = []  # one sentence per sink dropped or never opened
        self.ended: str | None = None  # why the last sink went (one sentence); None: not yet
        self.all_failed = False  # the last sink failed (rather than was closed by the user)

    @property
    def sinks(self) -> list[Sink]:
        with self._lock:
            return list(self._sinks)

    def add(self, sink: Sink) -> None:
        with self._lock:
            self._sinks.append(sink)

    def prepare(self, frame: np.ndarray) -> np.ndarray:
        """`frame` scaled to the set's output size (the frame itself when it already fits)."""
        if self.size is None:
            return frame
        return scale_frame(frame, self.size.width, self.size.height, self.fit)

    def write(self, frame: np.ndarray) -> None:
        frame = self.prepare(frame)  # once here, so each sink's own fit is a no-op
        for sink in self.sinks:
            try:
                sink.write(frame)
            except SinkClosed as e:
                self._drop(sink, f"The {e}", failed=False)
            except Exception as e:
                self._drop(sink, f"Output {sink.name} failed ({e})", failed=True)

    def _drop(self, sink: Sink, what: str, failed: bool) -> None:
        """Remove `sink`; say so, and what happens next, in one sentence."""
        with self._lock:
            self._sinks.remove(sink)
            left = [s.name for s in self._sinks]
            if failed:
                self.failed.append(f"{what}.")
            if not left:
                self.all_failed = failed
                ending = ", and no output is left" if failed else ""
                self.ended = f"{what}{ending}; the run ends."
        if left:
            level = logging.WARNING if failed else logging.INFO
            log.log(level, "%s; the run goes on with %s.", what, ", ".join(left))
        try:
            sink.close()
        except Exception:
            log.debug("closing the output %s raised", sink.name, exc_info=True)

    def close(self, failed: bool = False) -> None:
        """Close every sink; after a failed run (`failed`), `abandon` them instead, so no
        empty recording is left behind."""
        with self._lock:
            sinks, self._sinks = self._sinks, []
        for sink in sinks:
            try:
                if failed:
                    sink.abandon()
                else:
                    sink.close()
            except Exception as e:
                log.warning("Output %s did not close cleanly: %s", sink.name, e)

    def __len__(self) -> int:
        with self._lock:
            return len(self._sinks)

    def __enter__(self) -> SinkSet:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.close(failed=exc_type is not None)


def open_sinks(
    specs: Iterable[str | SinkSpec],
    width: int = 256,
    height: int = 256,
    fps: float = 30.0,
    fit: OutputFit = OutputFit.COVER,
) -> SinkSet:
    """Open every output that can run here, all at width x height; frames written to the set
    are scaled to that size once (`fit`) and then shared by every sink. The unavailable
    outputs are listed in `.failed` (one sentence each) and, when others opened, logged; when
    none opened the caller says so, once. A malformed spec raises ValueError before anything
    opens."""
    parsed = [parse_sink(s) if isinstance(s, str) else s for s in specs]
    result = SinkSet(size=Size(width, height), fit=fit)
    try:
        for spec in parsed:
            try:
                result.add(open_sink(spec, width, height, fps))
            except SinkUnavailable as e:
                result.failed.append(f"Output {spec} is unavailable: {e}")
    except BaseException:
        result.close(failed=True)  # e.g. a recording into a missing folder: free what opened
        raise
    if len(result):
        for message in result.failed:
            log.warning("%s The others go on.", message)
    return result
