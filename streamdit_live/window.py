"""The preview window output: a PyQt6 window in a helper process, fed through shared memory.

Qt is imported only inside that process (`_preview_main`), never in the engine's. When the
user closes the window the process ends (exit status 0) and the next write raises
`SinkClosed`, so the run can end (it was the only output) or go on without it.
"""

from __future__ import annotations

import multiprocessing
import os
import sys

import numpy as np

from streamdit_live.sink_base import Sink, SinkClosed, SinkUnavailable


def _preview_main(
    title: str, width: int, height: int, fps: float, pixels, seq, shown, stop, close, ready
) -> None:
    """The preview window's process: Qt lives here only, away from the engine's threads.

    `stop` quits (the sink closes); `close` closes the window as its close button does.
    """
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
        if close.is_set():
            label.close()  # the close button's path: the last window closes, Qt quits
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
    paint from ever blocking a write. Closing the window ends this sink: the next write
    raises `SinkClosed` (a crash of the window's process raises RuntimeError instead).
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
        self._close = ctx.Event()
        ready_rx, ready_tx = ctx.Pipe(duplex=False)
        shared = (self._pixels, self._seq, self._shown, self._stop, self._close, ready_tx)
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

    def request_close(self) -> None:
        """Close the window as a click on its close button does (a GUI menu, tests)."""
        self._close.set()

    def _send(self, frame: np.ndarray) -> None:
        if not self._process.is_alive():
            code = self._process.exitcode
            if code == 0:
                raise SinkClosed("preview window was closed")
            raise RuntimeError(f"the preview window's process ended with status {code}")
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
