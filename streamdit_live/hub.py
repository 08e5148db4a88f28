"""Where control changes meet: every controller (OSC, the GUI, MIDI tomorrow) drives the
engine through one `ControlHub`, and everyone listening hears every change at once.

A controller is an object the session starts and stops (`Controller`); it gets a
`ControlTarget` that tags its changes with its name, so a GUI can show a change that came
from OSC without echoing its own. The hub checks nothing itself: the engine checks each
change (ControlError with one sentence) before anyone hears of it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from streamdit_live.controls import ControlError, Controls
from streamdit_live.metrics import StreamStatus
from streamdit_live.osc import ControlTarget, OscConfig, OscServer

log = logging.getLogger(__name__)

# (controls after the change, who made it, the changes as given)
Listener = Callable[[Controls, str, Mapping[str, object]], None]


class ControllerUnavailable(RuntimeError):
    """A controller could not start here (a busy port); one sentence."""


@dataclass(frozen=True)
class LastChange:
    at: float  # time.monotonic()
    changes: Mapping[str, object]  # empty for a reset


class ControlHub:
    """Forwards checked changes to the running engine and tells every listener."""

    def __init__(self) -> None:
        self.engine = None  # an Engine once the stream runs
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()
        self.last: dict[str, LastChange] = {}  # per origin, the newest change

    def listen(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def apply(self, changes: Mapping[str, object], origin: str = "api") -> None:
        engine = self.engine
        if engine is None:
            raise ControlError("the stream is still starting; send it again in a moment.")
        engine.apply(changes)  # checks; raises ControlError and nobody hears of it
        self._announce(engine, origin, dict(changes))

    def reset(self, origin: str = "api") -> None:
        engine = self.engine
        if engine is not None:  # before the start there is nothing to reset
            engine.reset()
            self._announce(engine, origin, {})

    def target(self, origin: str) -> ControlTarget:
        """What a controller drives: this hub, its changes tagged with `origin`."""
        return _Tagged(self, origin)

    def _announce(self, engine, origin: str, changes: dict[str, object]) -> None:
        with self._lock:
            self.last[origin] = LastChange(time.monotonic(), changes)
            listeners = list(self._listeners)
        if not listeners:
            return
        controls: Controls = engine.controls  # what the change led to, already checked
        for listener in listeners:
            try:
                listener(controls, origin, changes)
            except Exception:  # noqa: BLE001 - a listener must not undo an applied change
                log.exception("a control listener failed")


class _Tagged:
    def __init__(self, hub: ControlHub, origin: str) -> None:
        self._hub, self._origin = hub, origin

    def apply(self, changes: Mapping[str, object]) -> None:
        self._hub.apply(changes, self._origin)

    def reset(self) -> None:
        self._hub.reset(self._origin)


class Controller(Protocol):
    """Something that drives the controls from outside: OSC today, MIDI tomorrow."""

    name: str
    required: bool  # True: failing to start is the user's mistake (a SetupError)

    def start(self, target: ControlTarget, status: Callable[[], StreamStatus]) -> None:
        """Start listening; raise ControllerUnavailable with one sentence if it cannot."""

    def stop(self) -> None: ...

    def describe(self) -> str:
        """Where it listens, e.g. "127.0.0.1:9000"."""


class OscController:
    """The OSC server as a controller."""

    name = "osc"

    def __init__(
        self,
        config: OscConfig,
        load_preset: Callable[[str], Mapping[str, object]],
        required: bool = False,
    ) -> None:
        self.config, self.required = config, required
        self._load_preset = load_preset
        self.server: OscServer | None = None

    def start(self, target: ControlTarget, status: Callable[[], StreamStatus]) -> None:
        server = OscServer(self.config, target, self._load_preset, status)
        try:
            self.server = server.start()
        except OSError as exc:
            raise ControllerUnavailable(str(exc)) from None

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def describe(self) -> str:
        if self.server is None:
            return f"{self.config.host}:{self.config.port} (off)"
        host, port = self.server.address
        return f"{host}:{port}"
