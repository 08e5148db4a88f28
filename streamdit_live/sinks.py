"""Frame sinks: virtual camera, video file, preview window and an HTTP MJPEG stream.

Every sink takes uint8 RGB (H, W, 3) frames, fits them to the size it was opened with and
returns quickly: the window and MJPEG sinks hand frames to their own process or threads
through latest-wins buffers, so a stalled viewer never stalls the stream. `SinkSet` writes
to several sinks at once and drops (with one logged sentence) a sink that fails.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import platform
import sys
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

from streamdit_live.frames import check_frame, fit_frame
from streamdit_live.slot import LatestSlot

log = logging.getLogger(__name__)

SINK_FORMS = (
    "virtualcam, virtualcam:DEVICE, file:PATH.mp4, file:PATH.avi, window, "
    "mjpeg, mjpeg:PORT or mjpeg:HOST:PORT"
)
DEFAULT_MJPEG_PORT = 8080
VIDEO_FOURCC = {".mp4": "mp4v", ".avi": "MJPG"}


class SinkKind(Enum):
    VIRTUALCAM = "virtualcam"
    FILE = "file"
    WINDOW = "window"
    MJPEG = "mjpeg"


class SinkUnavailable(RuntimeError):
    """A sink cannot run here; the message says in one sentence how to get it."""


@dataclass(frozen=True)
class SinkSpec:
    kind: SinkKind
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
        return self.kind.value


def parse_sink(spec: str) -> SinkSpec:
    """Parse `virtualcam[:DEVICE]`, `file:PATH.mp4|.avi`, `window` or `mjpeg[:[HOST:]PORT]`."""
    name, sep, arg = spec.strip().partition(":")
    bad = ValueError(f"Unknown output {spec!r}: use {SINK_FORMS}.")
    try:
        kind = SinkKind(name.lower())
    except ValueError:
        raise bad from None
    if sep and not arg:
        raise bad
    if kind is SinkKind.VIRTUALCAM:
        return SinkSpec(kind, device=arg or None)
    if kind is SinkKind.FILE:
        ext = os.path.splitext(arg)[1].lower()
        if ext not in VIDEO_FOURCC:
            raise ValueError(f"Output {spec!r}: a recording must end in .mp4 or .avi.")
        return SinkSpec(kind, path=arg)
    if kind is SinkKind.WINDOW:
        if arg:
            raise bad
        return SinkSpec(kind)
    host, _, port = arg.rpartition(":")
    if not arg:
        return SinkSpec(kind)
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"Output {spec!r}: the MJPEG port must be a number from 0 to 65535.")
    return SinkSpec(kind, host=host or "127.0.0.1", port=int(port))


class Sink:
    """Base: `write(frame)` checks the frame and fits it to (width, height); idempotent close."""

    def __init__(self, name: str, width: int, height: int, fps: float) -> None:
        if width <= 0 or height <= 0 or not fps > 0:
            raise ValueError(
                f"Output {name}: size and fps must be positive, got {width}x{height} at {fps} fps."
            )
        self.name, self.width, self.height, self.fps = name, width, height, fps
        self.frames_written = 0
        self._closed = False

    def write(self, frame: np.ndarray) -> None:
        if self._closed:
            raise RuntimeError(f"Output {self.name} is closed.")
        self._send(fit_frame(check_frame(frame, f"output {self.name}"), self.width, self.height))
        self.frames_written += 1

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._release()

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, frame: np.ndarray) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        pass


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
    and interpreter exit, so Ctrl-C still leaves a playable file.
    """

    def __init__(self, path: str, width: int, height: int, fps: float) -> None:
        super().__init__(f"file:{path}", width, height, fps)
        ext = os.path.splitext(path)[1].lower()
        if ext not in VIDEO_FOURCC:
            raise ValueError(f"Output file {path!r}: a recording must end in .mp4 or .avi.")
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise ValueError(f"Output file {path!r}: the folder {folder} does not exist.")
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


class _MjpegHub:
    """Fans JPEG frames out to HTTP clients, one latest-wins slot per client."""

    def __init__(self, quality: int) -> None:
        self._lock = threading.Lock()  # guards the three fields below
        self._clients: set[LatestSlot[bytes]] = set()
        self._frame: np.ndarray | None = None
        self._jpeg: bytes | None = None  # self._frame encoded, once someone asked for it
        self._quality = quality

    def publish(self, frame: np.ndarray) -> None:
        with self._lock:
            clients = list(self._clients)
            # Nobody watching: keep a private copy and encode only when someone connects.
            self._frame, self._jpeg = (frame if clients else frame.copy()), None
        if not clients:
            return
        jpeg = self.encode(frame)
        with self._lock:
            if self._frame is frame:
                self._jpeg = jpeg
        for slot in clients:
            slot.put(jpeg)  # a slow client just misses frames; it never holds the others up

    def encode(self, frame: np.ndarray) -> bytes:
        bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, self._quality])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        return buf.tobytes()

    def latest(self) -> bytes | None:
        with self._lock:
            frame, jpeg = self._frame, self._jpeg
        if jpeg is not None or frame is None:
            return jpeg
        jpeg = self.encode(frame)
        with self._lock:
            if self._frame is frame:
                self._jpeg = jpeg
        return jpeg

    def join(self) -> LatestSlot[bytes]:
        slot: LatestSlot[bytes] = LatestSlot()
        first = self.latest()
        if first is not None:
            slot.put(first)
        with self._lock:
            self._clients.add(slot)
        return slot

    def leave(self, slot: LatestSlot[bytes]) -> None:
        with self._lock:
            self._clients.discard(slot)

    @property
    def clients(self) -> int:
        with self._lock:
            return len(self._clients)

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients), set()
        for slot in clients:
            slot.close()


class _MjpegHandler(BaseHTTPRequestHandler):
    server: _MjpegServer
    BOUNDARY = "streamditframe"
    timeout = 10.0  # a client that takes nothing for this long is dropped, freeing its thread

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            self._send_body(200, "text/html; charset=utf-8", self.server.index_html.encode())
        elif path in ("/stream.mjpg", "/stream"):
            self._stream()
        elif path == "/snapshot.jpg":
            jpeg = self.server.hub.latest()
            if jpeg is None:
                self._send_body(503, "text/plain", b"no frame yet\n")
            else:
                self._send_body(200, "image/jpeg", jpeg)
        else:
            self._send_body(404, "text/plain", b"not found: try / or /stream.mjpg\n")

    def _send_body(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={self.BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        hub = self.server.hub
        slot = hub.join()
        try:
            while True:
                # A timeout re-sends the last frame: viewers such as OBS give up on a silent
                # stream, and a paused engine should not look like a dead server.
                jpeg = slot.get(timeout=1.0)
                if jpeg is None:
                    if slot.closed:
                        return
                    jpeg = hub.latest()
                    if jpeg is None:
                        continue
                head = (
                    f"--{self.BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                    f"Content-Length: {len(jpeg)}\r\n\r\n"
                ).encode()
                self.wfile.write(head + jpeg + b"\r\n")
                self.wfile.flush()
        except OSError:  # the client went away
            return
        finally:
            hub.leave(slot)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("mjpeg %s: " + format, self.address_string(), *args)


class _MjpegServer(ThreadingHTTPServer):
    daemon_threads = True  # client threads must not keep the app alive
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], hub: _MjpegHub, index_html: str) -> None:
        self.hub, self.index_html = hub, index_html
        super().__init__(address, _MjpegHandler)


class MjpegSink(Sink):
    """An HTTP server: an index page at /, the stream at /stream.mjpg, a still at /snapshot.jpg."""

    def __init__(
        self,
        width: int,
        height: int,
        fps: float,
        host: str = "127.0.0.1",
        port: int = DEFAULT_MJPEG_PORT,
        quality: int = 85,
    ) -> None:
        super().__init__(f"mjpeg:{host}:{port}", width, height, fps)
        self._hub = _MjpegHub(quality)
        page = (
            "<!doctype html><title>StreamDiT Live</title>"
            "<body style='margin:0;background:#000'>"
            f"<img src='/stream.mjpg' width='{width}' height='{height}' "
            "style='width:100vw;height:100vh;object-fit:contain' alt='StreamDiT Live'></body>"
        )
        try:
            self._server = _MjpegServer((host, port), self._hub, page)
        except OSError as e:
            raise SinkUnavailable(
                f"The MJPEG server could not listen on {host}:{port} ({e.strerror}): "
                "pick another port with mjpeg:PORT."
            ) from e
        self.host, self.port = host, self._server.server_address[1]
        self.name = f"mjpeg:{host}:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        """The stream's address, for OBS's media source or a browser."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/stream.mjpg"

    @property
    def clients(self) -> int:
        return self._hub.clients

    def _send(self, frame: np.ndarray) -> None:
        self._hub.publish(frame)

    def _release(self) -> None:
        self._hub.close()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(2.0)


def _preview_main(
    title: str, width: int, height: int, fps: float, pixels, seq, shown, stop, ready
) -> None:
    """The preview window's process: Qt lives here only, away from the engine's threads."""
    try:
        from PyQt6 import QtCore, QtGui, QtWidgets

        app = QtWidgets.QApplication([sys.argv[0] if sys.argv else "streamdit-live"])
    except Exception as e:  # a missing display usually aborts inside Qt before this
        ready.send(f"Qt could not start ({e})")
        return
    view = np.frombuffer(pixels.get_obj(), dtype=np.uint8).reshape(height, width, 3)
    label = QtWidgets.QLabel()
    label.setWindowTitle(title)
    label.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
    label.setMinimumSize(64, 64)
    label.resize(width, height)
    label.setStyleSheet("background: black")
    label.show()
    parent = os.getppid()
    last_seq = 0

    def tick() -> None:
        nonlocal last_seq
        if stop.is_set() or os.getppid() != parent:  # closed, or the app died
            app.quit()
            return
        with pixels.get_lock():
            if seq.value == last_seq:
                return
            last_seq, frame = seq.value, view.copy()
        image = QtGui.QImage(
            frame.data, width, height, 3 * width, QtGui.QImage.Format.Format_RGB888
        )
        pixmap = QtGui.QPixmap.fromImage(image).scaled(
            label.size(),
            QtCore.Qt.AspectRatioMode.KeepAspectRatio,
            QtCore.Qt.TransformationMode.SmoothTransformation,
        )
        label.setPixmap(pixmap)
        with shown.get_lock():
            shown.value += 1

    timer = QtCore.QTimer()
    timer.timeout.connect(tick)
    timer.start(max(1, int(1000 / fps)))
    ready.send("ok")
    app.exec()


class WindowSink(Sink):
    """A PyQt6 preview in a helper process, fed through shared memory (latest frame wins).

    A separate process keeps Qt's main-thread rule away from the engine and keeps a slow
    paint from ever blocking a write. Closing the window ends this sink.
    """

    def __init__(
        self, width: int, height: int, fps: float, title: str = "StreamDiT Live preview"
    ) -> None:
        super().__init__("window", width, height, fps)
        no_display = not any(
            os.environ.get(k) for k in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")
        )
        if sys.platform.startswith("linux") and no_display:
            raise SinkUnavailable(
                "No display is available for the preview window: run it in a desktop session "
                "(DISPLAY or WAYLAND_DISPLAY set) or watch the stream with mjpeg:PORT instead."
            )
        # spawn, not fork: forking a process that runs torch and capture threads is unsafe.
        ctx = multiprocessing.get_context("spawn")
        self._pixels = ctx.Array("B", width * height * 3)
        self._seq = ctx.Value("Q", 0, lock=False)  # guarded by the pixels' lock
        self._shown = ctx.Value("Q", 0)
        self._stop = ctx.Event()
        ready_rx, ready_tx = ctx.Pipe(duplex=False)
        shared = (self._pixels, self._seq, self._shown, self._stop, ready_tx)
        self._process = ctx.Process(
            target=_preview_main,
            args=(title, width, height, fps, *shared),
            name="streamdit-preview",
            daemon=True,
        )
        self._process.start()
        ready_tx.close()
        reason = "it exited before showing a window"
        try:
            if ready_rx.poll(20.0):
                reason = ready_rx.recv()
        except EOFError:
            pass
        finally:
            ready_rx.close()
        if reason != "ok":
            self._stop_process()
            raise SinkUnavailable(
                f"The preview window could not open ({reason}): check the display and Qt's "
                "platform plugin, or use mjpeg:PORT instead."
            )
        self._view = np.frombuffer(self._pixels.get_obj(), dtype=np.uint8).reshape(height, width, 3)

    @property
    def frames_shown(self) -> int:
        """Frames the window has painted (fewer than written when it paints slower)."""
        return self._shown.value

    def _send(self, frame: np.ndarray) -> None:
        if not self._process.is_alive():
            raise RuntimeError("the preview window was closed")
        with self._pixels.get_lock():
            self._view[...] = frame
            self._seq.value += 1

    def _stop_process(self) -> None:
        self._stop.set()
        self._process.join(3.0)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(1.0)

    def _release(self) -> None:
        self._stop_process()


def open_sink(spec: str | SinkSpec, width: int = 256, height: int = 256, fps: float = 30.0) -> Sink:
    """Open one output; raises SinkUnavailable when it cannot run here (a one-sentence why)."""
    spec = parse_sink(spec) if isinstance(spec, str) else spec
    if spec.kind is SinkKind.VIRTUALCAM:
        return VirtualCamSink(width, height, fps, device=spec.device)
    if spec.kind is SinkKind.FILE:
        return FileSink(spec.path, width, height, fps)
    if spec.kind is SinkKind.WINDOW:
        return WindowSink(width, height, fps)
    return MjpegSink(width, height, fps, host=spec.host, port=spec.port)


class SinkSet:
    """Writes each frame to several sinks; one that fails is logged, closed and dropped."""

    def __init__(self, sinks: Iterable[Sink] = ()) -> None:
        self._lock = threading.Lock()
        self._sinks = list(sinks)
        self.failed: list[str] = []  # one sentence per sink dropped or never opened

    @property
    def sinks(self) -> list[Sink]:
        with self._lock:
            return list(self._sinks)

    def add(self, sink: Sink) -> None:
        with self._lock:
            self._sinks.append(sink)

    def write(self, frame: np.ndarray) -> None:
        for sink in self.sinks:
            try:
                sink.write(frame)
            except Exception as e:
                message = f"Output {sink.name} failed ({e}) and was dropped; the others go on."
                log.warning("%s", message)
                with self._lock:
                    self._sinks.remove(sink)
                    self.failed.append(message)
                try:
                    sink.close()
                except Exception:
                    log.debug("closing the failed output %s raised", sink.name, exc_info=True)

    def close(self) -> None:
        with self._lock:
            sinks, self._sinks = self._sinks, []
        for sink in sinks:
            try:
                sink.close()
            except Exception as e:
                log.warning("Output %s did not close cleanly: %s", sink.name, e)

    def __len__(self) -> int:
        with self._lock:
            return len(self._sinks)

    def __enter__(self) -> SinkSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_sinks(
    specs: Iterable[str | SinkSpec], width: int = 256, height: int = 256, fps: float = 30.0
) -> SinkSet:
    """Open every output that can run here; the unavailable ones are logged and listed in
    `.failed`. A malformed spec raises ValueError before anything opens."""
    parsed = [parse_sink(s) if isinstance(s, str) else s for s in specs]
    result = SinkSet()
    for spec in parsed:
        try:
            result.add(open_sink(spec, width, height, fps))
        except SinkUnavailable as e:
            log.warning("Output %s is unavailable: %s The others go on.", spec, e)
            result.failed.append(str(e))
    return result
