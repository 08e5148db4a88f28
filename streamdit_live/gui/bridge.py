"""The session, seen from Qt: frames, state, notices and control changes as signals.

Sessions start, restart and stop on a control thread of its own (stopping one waits for an
engine step and the outputs to close), so the Qt thread never waits; the requests are
latest-wins, so clicking through five sources starts only the last. Frames arrive on the
session's threads and are kept, newest only, until the Qt thread takes them: a slow paint
skips frames instead of queueing them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

import numpy as np
from PyQt6.QtCore import QObject, pyqtSignal

from streamdit_live.controls import Controls
from streamdit_live.events import Notice, NoticeKind, SessionHooks, SessionState
from streamdit_live.hub import OscController
from streamdit_live.osc import OscConfig
from streamdit_live.presets import PresetLibrary
from streamdit_live.runner import SessionRunner
from streamdit_live.session import Session, SessionPlan

log = logging.getLogger(__name__)

_STOP = object()  # a request: stop the session
_QUIT = object()  # a request: stop the session and end the control thread


class _Latest:
    """The newest frame from another thread, and whether the Qt thread was told of it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.frame: np.ndarray | None = None
        self.told = False
        self.count = 0  # frames seen, shown or not


class SessionBridge(QObject):
    input_ready = pyqtSignal()
    output_ready = pyqtSignal()
    state_changed = pyqtSignal(object)  # SessionState
    notice = pyqtSignal(object)  # Notice
    controls_changed = pyqtSignal(object, str, object)  # Controls, origin, changes

    def __init__(self, library: PresetLibrary, osc_port: int | None, parent=None) -> None:
        super().__init__(parent)
        self.osc_port = osc_port  # None: no OSC
        self._input, self._output = _Latest(), _Latest()
        hooks = SessionHooks(
            on_state=self.state_changed.emit,
            on_notice=self.notice.emit,
            input_taps=[lambda f: self._keep(self._input, f, self.input_ready)],
            output_taps=[lambda f: self._keep(self._output, f, self.output_ready)],
        )
        self.runner = SessionRunner(
            library,
            hooks,
            listeners=(self._heard,),
            make_controllers=self._controllers,
        )
        self._library = library
        self._cond = threading.Condition()
        self._request: object = None
        self._thread = threading.Thread(target=self._serve, name="session-control", daemon=True)
        self._thread.start()

    # --- requests from the Qt thread; none of them waits --------------------------------

    def start(self, plan: SessionPlan) -> None:
        self._ask(plan)

    def stop(self) -> None:
        self._ask(_STOP)

    def shutdown(self, timeout: float = 60.0) -> bool:
        """Stop the session and the control thread, waiting for both (the window closes)."""
        self._ask(_QUIT)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def apply(self, changes: Mapping[str, object]) -> Controls:
        """Apply to the running stream now (ControlError when refused or not running)."""
        return self.runner.apply(changes, origin="gui")

    @property
    def session(self) -> Session | None:
        return self.runner.session

    def take_input(self) -> np.ndarray | None:
        return self._take(self._input)

    def take_output(self) -> np.ndarray | None:
        return self._take(self._output)

    @property
    def frames_in(self) -> int:
        return self._input.count

    @property
    def frames_out(self) -> int:
        return self._output.count

    # --- the other threads ------------------------------------------------------------

    def _ask(self, request: object) -> None:
        with self._cond:
            if self._request is not _QUIT:  # quitting wins over anything asked later
                self._request = request
            self._cond.notify_all()

    def _serve(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._request is not None)
                request, self._request = self._request, None
            if request is _QUIT:
                self.runner.stop()
                return
            if request is _STOP:
                self.runner.stop()
                continue
            try:
                self.runner.start(request)  # stops the running one first
            except (ValueError, RuntimeError) as exc:  # a plan that cannot run here
                self.notice.emit(Notice(NoticeKind.SETUP_FAILED, str(exc)))
                self.state_changed.emit(SessionState.FAILED)

    def _controllers(self) -> tuple[OscController, ...]:
        if self.osc_port is None:
            return ()
        config = OscConfig(port=self.osc_port)
        return (OscController(config, lambda n: self._library.get(n, allow_path=False).values),)

    def _heard(self, controls: Controls, origin: str, changes: Mapping[str, object]) -> None:
        self.controls_changed.emit(controls, origin, dict(changes))

    @staticmethod
    def _keep(latest: _Latest, frame: np.ndarray, signal) -> None:
        with latest.lock:
            latest.frame = frame
            latest.count += 1
            told, latest.told = latest.told, True
        if not told:
            signal.emit()

    @staticmethod
    def _take(latest: _Latest) -> np.ndarray | None:
        with latest.lock:
            frame, latest.frame, latest.told = latest.frame, None, False
        return frame
