"""The MJPEG output: an HTTP server streaming the frames as multipart JPEG.

`MjpegSink` serves an index page at /, the stream at /stream.mjpg and a still at
/snapshot.jpg. Writes only hand the frame to a hub; each client has its own latest-wins
slot and thread, so a stalled viewer never stalls the stream.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

from streamdit_live.sink_base import Sink, SinkUnavailable
from streamdit_live.slot import LatestSlot

log = logging.getLogger(__name__)

DEFAULT_MJPEG_PORT = 8080


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
