"""Sessions on a thread of their own, for a front end that stays open: start one, restart it
with a new source, model or outputs, stop it; the app and its controls outlive them all.

The loaded models are kept between sessions and reused when the next plan asks for the same
model, device, weights and size, so switching the source costs a second, not a model load.
Nothing here imports Qt; `gui` wraps it in signals.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from streamdit_live.controls import ControlError, Controls
from streamdit_live.events import Notice, NoticeKind, SessionHooks, SessionState
from streamdit_live.hub import Controller, Listener
from streamdit_live.metrics import StreamStatus
from streamdit_live.models import Models
from streamdit_live.presets import PresetLibrary
from streamdit_live.session import Session, SessionPlan

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 60.0  # an engine step on a slow CPU, then the outputs' close


class NotRunning(ControlError):
    """No stream runs right now to take a change (the caller keeps it for the next start)."""


@dataclass(frozen=True)
class _ModelKey:
    model: str
    device: str | None
    weights: tuple
    size: str


def _model_key(plan: SessionPlan) -> _ModelKey:
    c = plan.controls
    return _ModelKey(c.model, plan.device, plan.weights, str(c.size))


class SessionRunner:
    """Runs one session at a time on a worker thread. `hooks` and `listeners` are shared by
    every session it starts; `controllers` are made anew for each (`make_controllers`)."""

    def __init__(
        self,
        library: PresetLibrary,
        hooks: SessionHooks,
        listeners: tuple[Listener, ...] = (),
        make_controllers=lambda: (),
    ) -> None:
        self.library = library
        self.hooks = hooks
        self.listeners = listeners
        self.make_controllers = make_controllers
        self.session: Session | None = None
        self._thread: threading.Thread | None = None
        self._models: tuple[_ModelKey, Models] | None = None
        self._lock = threading.Lock()

    def keep(self, models: Models, plan: SessionPlan) -> None:
        """Reuse `models` (already loaded) for plans with the same model as `plan`."""
        self._models = (_model_key(plan), models)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, plan: SessionPlan) -> None:
        """Stop any session, then start one for `plan` (ValueError now for a bad plan)."""
        self.stop()
        key = _model_key(plan)
        models = self._models[1] if self._models and self._models[0] == key else None
        controllers: tuple[Controller, ...] = tuple(self.make_controllers())
        session = Session(plan, self.library, models, controllers=controllers, hooks=self.hooks)
        for listener in self.listeners:
            session.hub.listen(listener)
        with self._lock:
            self.session = session
        self._thread = threading.Thread(
            target=self._run, args=(session, key), name="session", daemon=True
        )
        self._thread.start()

    def _run(self, session: Session, key: _ModelKey) -> None:
        try:
            session.run()
        except (ValueError, RuntimeError):
            pass  # the session said why in a Notice and its state is FAILED
        except Exception as exc:  # noqa: BLE001 - a front end must hear of any failure
            log.exception("the session failed")
            if self.hooks.on_notice is not None:
                self.hooks.on_notice(Notice(NoticeKind.SESSION_FAILED, str(exc)))
            if self.hooks.on_state is not None:
                self.hooks.on_state(SessionState.FAILED)
        finally:
            if session.models is not None:
                self._models = (key, session.models)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> bool:
        """Stop the session and wait for it to close everything; False if it hung."""
        thread, session = self._thread, self.session
        if session is not None:
            session.stop()
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("The session did not stop within %.0f s.", timeout)
                return False
        self._thread = None
        return True

    def apply(self, changes: Mapping[str, object], origin: str = "gui") -> Controls:
        """Apply `changes` to the running stream (ControlError if refused or not running)."""
        session = self.session
        if session is None or not self.running or session.engine is None:
            raise NotRunning("the stream is not running.")
        session.hub.apply(changes, origin)
        return session.engine.controls

    def status(self) -> StreamStatus | None:
        session = self.session
        return session.status() if session is not None and self.running else None
