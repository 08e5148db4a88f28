"""OSC control: a UDP server whose address space is derived from the control schema.

`/streamdit/<control>` sets a control (`prompt_a` and `prompt_b` are `/streamdit/prompt/a`
and `/streamdit/prompt/b`); `/streamdit/preset s` loads a preset and `/streamdit/reset` restarts
the stream. Controls that need a restart of the app (model, size, fps) are not exposed.

A message is applied only if its bytes decode exactly (`osc_wire`) and its type tags and
values are the ones the schema declares for its address. Anything else (garbage, a cut-off
float, stray bytes, wrong type tags, a bundle nested too deep, an unknown address, a value out
of range, a crossfade with no B) is answered with `/streamdit/error s` to the sender and
changes nothing; the server keeps going. The log gets the first refusal of each kind at once
and then one line per kind per `LOG_PERIOD_S` with the count, so a flood cannot fill the disk.
Once a second it sends `/streamdit/status/{fps,latency,prompt}` to `--osc-feedback` or, if
none is set, to the last sender.

Why not python-osc's own servers: the threading server spawns a thread per packet, which
reorders and drops bursts from a fader; `socketserver`'s blocking loop cannot send feedback
on a timer; its parser is lenient (see `osc_wire`). So: one thread, one socket with a large
receive buffer, a strict decoder; python-osc builds the replies.
"""

from __future__ import annotations

import enum
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from pythonosc.osc_message_builder import OscMessageBuilder

from streamdit_live.controls import (
    CONTROLS,
    ControlError,
    Mode,
    Scope,
    end_ab_mixing,
    preset_prompt_state,
)
from streamdit_live.metrics import StreamStatus
from streamdit_live.osc_wire import DecodeError, Message, NestingError, decode, short

log = logging.getLogger(__name__)

PREFIX = "/streamdit"
ERROR_ADDRESS = f"{PREFIX}/error"
DEFAULT_PORT = 9000
# The kernel may cap this (net.core.rmem_max); whatever it grants still beats the default.
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024
MAX_DATAGRAM = 65536  # larger than any UDP payload, so recvfrom never truncates
RESET_ADDRESS = f"{PREFIX}/reset"
PRESET_ADDRESS = f"{PREFIX}/preset"
LOG_PERIOD_S = 10.0  # at most one log line per kind of refusal this often
MAX_REASON_CHARS = 300  # an error reply or log line never echoes more of what was sent
MAX_PACKETS_PER_WAKE = 256  # then feedback and the log get their turn, even under a flood
TICK_S = 1.0  # the longest the server thread sleeps between housekeeping rounds

# The type tag (one argument) each kind of control takes: ints for floats as TouchOSC sends
# them, integral floats (and 64-bit numbers) for ints, T/F or 0/1 for a bool.
_TAGS_BY_KIND: dict[type, str] = {str: "s", Mode: "s", float: "fdih", int: "ihfd", bool: "TFif"}


def control_address(name: str) -> str:
    return f"{PREFIX}/{CONTROLS[name].osc_name or name}"


def control_addresses() -> dict[str, str]:
    """{OSC address: control name} for every control that can change while streaming."""
    return {
        control_address(name): name
        for name, spec in CONTROLS.items()
        if spec.scope is not Scope.STARTUP
    }


class ControlTarget(Protocol):
    """Where checked changes go: the engine (through its own queue) or a test double.

    `apply` raises ControlError for changes it refuses as a whole (a value the model cannot
    take, a crossfade with nothing to blend: `controls.check_prompt_effect`)."""

    def apply(self, changes: Mapping[str, object]) -> None: ...

    def reset(self) -> None: ...


@dataclass(frozen=True)
class OscConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT  # 0 picks a free port (tests)
    feedback: tuple[str, int] | None = None  # None: answer the last sender
    feedback_period: float = 1.0
    max_packet: int = 16384  # a prompt is well under 1 KiB; more is a mistake or an attack


def parse_host_port(text: str) -> tuple[str, int]:
    """`HOST:PORT` -> (host, port); raise ValueError with a sentence otherwise."""
    host, sep, port = text.rpartition(":")
    if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"expected HOST:PORT such as 127.0.0.1:9001, got {text!r}")
    return host, int(port)


def build_message(address: str, *args: object) -> bytes:
    builder = OscMessageBuilder(address=address)
    for arg in args:
        builder.add_arg(arg)
    return builder.build().dgram


class Cause(enum.Enum):
    """Why a packet was refused; the log counts refusals per cause."""

    MALFORMED = "malformed packets"
    OVERSIZED = "oversized packets"
    TOO_DEEP = "bundles nested too deep"
    UNKNOWN_ADDRESS = "messages to unknown addresses"
    BAD_ARGUMENTS = "messages with wrong type tags"
    BAD_VALUE = "messages with a value refused"  # out of range, or one the stream cannot take
    INTERNAL = "internal errors"


class OscRejected(Exception):
    """A message the server drops; the text is what the sender gets back."""

    def __init__(self, reason: str, cause: Cause = Cause.BAD_VALUE) -> None:
        super().__init__(_cap(reason))
        self.cause = cause


def _cap(reason: str) -> str:
    """At most `MAX_REASON_CHARS`: a reply or a log line never echoes a whole packet."""
    return reason if len(reason) <= MAX_REASON_CHARS else reason[: MAX_REASON_CHARS - 3] + "..."


@dataclass
class _Window:
    started: float
    count: int = 0  # refusals not logged yet
    last: str = ""


class RejectLog:
    """Rate-limited logging of refusals, a pure function of the clock passed in.

    The first refusal of a cause is logged at once, with its reason; later ones are counted,
    and `due` gives one summary line per cause per `period` while they keep coming.
    """

    def __init__(self, period: float = LOG_PERIOD_S) -> None:
        self.period = period
        self._windows: dict[Cause, _Window] = {}

    def note(self, cause: Cause, reason: str, now: float) -> bool:
        """Count one refusal; True if it should be logged now (the first in its window)."""
        window = self._windows.get(cause)
        if window is None:
            self._windows[cause] = _Window(now)
            return True
        window.count += 1
        window.last = reason
        return False

    def due(self, now: float, final: bool = False) -> list[str]:
        """Summary lines for the windows that have ended (all of them if `final`)."""
        lines = []
        for cause, window in list(self._windows.items()):
            if not final and now - window.started < self.period:
                continue
            if window.count:
                lines.append(
                    f"refused {window.count} more {cause.value} in the last "
                    f"{now - window.started:.0f} s (the last: {window.last})"
                )
                self._windows[cause] = _Window(now)  # still coming: keep counting
            else:
                del self._windows[cause]  # quiet for a period: the next one is logged at once
        return lines


class OscServer:
    """Receives OSC on its own thread and forwards checked changes to a `ControlTarget`.

    Use as a context manager. `load_preset(name)` returns the preset's control values or
    raises ValueError; `status()` supplies the feedback.
    """

    def __init__(
        self,
        config: OscConfig,
        target: ControlTarget,
        load_preset: Callable[[str], Mapping[str, object]],
        status: Callable[[], StreamStatus] | None = None,
    ) -> None:
        self.config = config
        self._target = target
        self._load_preset = load_preset
        self._status = status
        self._addresses = control_addresses()
        self._sock: socket.socket | None = None
        # Wakes the thread on stop; made by a successful `start`, so a failed one holds none.
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._last_sender: tuple[str, int] | None = None
        self.handled = 0  # messages applied
        self.rejected = 0  # packets or messages dropped with an error reply
        self._feedback_errors = 0
        self._reject_log = RejectLog()

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); the port is the real one when the config asked for 0."""
        assert self._sock is not None, "the server is not started"
        return self._sock.getsockname()[:2]

    def start(self) -> OscServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
            sock.bind((self.config.host, self.config.port))
        except OSError as exc:
            sock.close()
            raise OSError(
                f"cannot listen for OSC on {self.config.host}:{self.config.port} "
                f"({exc.strerror}); pick another port with --osc-port."
            ) from None
        sock.setblocking(False)
        self._sock = sock
        self._wake = socket.socketpair()
        self._thread = threading.Thread(target=self._serve, name="osc-server", daemon=True)
        self._thread.start()
        log.info("OSC: listening on %s:%d", *self.address)
        if not self.config.host.startswith("127.") and self.config.host != "localhost":
            log.warning(
                "OSC is open to the network on %s:%d: anyone who can reach it can change "
                "the stream.",
                *self.address,
            )
        return self

    def stop(self) -> None:
        """Stop serving and close the sockets; a second call does nothing."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._wake is not None:
            self._wake[1].send(b"x")
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        if self._thread is None or not self._thread.is_alive():
            for line in self._reject_log.due(time.monotonic(), final=True):
                log.warning("OSC: %s", line)
        if self._sock is not None:
            self._sock.close()
        if self._wake is not None:
            for end in self._wake:
                end.close()

    def __enter__(self) -> OscServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the server thread -------------------------------------------------------------

    def _serve(self) -> None:
        assert self._sock is not None and self._wake is not None
        next_feedback = time.monotonic() + self.config.feedback_period
        while not self._stopping.is_set():
            timeout = min(TICK_S, max(0.0, next_feedback - time.monotonic()))
            readable, _, _ = select.select([self._sock, self._wake[0]], [], [], timeout)
            if self._sock in readable:
                self._drain()
            now = time.monotonic()
            for line in self._reject_log.due(now):
                log.warning("OSC: %s", line)
            if now >= next_feedback:
                self._send_feedback()
                next_feedback = time.monotonic() + self.config.feedback_period

    def _drain(self) -> None:
        """Handle the datagrams waiting in the socket (a fader sends bursts), at most
        `MAX_PACKETS_PER_WAKE` so that a flood cannot starve the feedback or the log."""
        assert self._sock is not None
        for _ in range(MAX_PACKETS_PER_WAKE):
            try:
                data, sender = self._sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. an ICMP error surfacing on the socket
                self._refused(Cause.INTERNAL, f"receive failed ({exc}); still listening", None)
                return
            self._last_sender = sender[:2]
            try:
                self.handle_packet(data)
            except OscRejected as exc:
                self._refused(exc.cause, str(exc), sender[:2])
            except Exception as exc:  # noqa: BLE001 - a bug in a target must not stop OSC
                self._refused(Cause.INTERNAL, f"internal error: {exc}", sender[:2], exc)

    def _refused(
        self,
        cause: Cause,
        reason: str,
        sender: tuple[str, int] | None,
        exc: BaseException | None = None,
    ) -> None:
        """Count, log (rate-limited) and answer one refused packet (or a failed receive,
        which has no sender)."""
        reason = _cap(reason)
        if sender is not None:
            self.rejected += 1
        if self._reject_log.note(cause, reason, time.monotonic()):
            origin = "" if sender is None else f" from {sender[0]}:{sender[1]}"
            log.warning(
                "OSC%s: %s (further %s are counted, one line per %.0f s)",
                origin,
                reason,
                cause.value,
                self._reject_log.period,
                exc_info=exc,
            )
        if sender is not None:
            self._send(sender, build_message(ERROR_ADDRESS, reason))

    def handle_packet(self, data: bytes) -> None:
        """Decode, check and apply one datagram; raise OscRejected with the reason to send
        back, having changed nothing."""
        if len(data) > self.config.max_packet:
            raise OscRejected(
                f"packet of {len(data)} bytes is over the {self.config.max_packet}-byte limit.",
                Cause.OVERSIZED,
            )
        try:
            messages = decode(data)
        except NestingError as exc:
            raise OscRejected(f"not a valid OSC packet: {exc}", Cause.TOO_DEEP) from None
        except DecodeError as exc:
            raise OscRejected(
                f"not a valid OSC packet ({len(data)} bytes): {exc}", Cause.MALFORMED
            ) from None
        # Check every message of a bundle, then apply its changes in one `apply` (which the
        # engine checks as a whole), so a bundle applies whole or not at all.
        changes: dict[str, object] = {}
        reset = False
        for message in messages:
            if message.address == RESET_ADDRESS:
                if message.tags:
                    raise OscRejected(
                        f"{RESET_ADDRESS} takes no arguments, got ',{message.tags}'.",
                        Cause.BAD_ARGUMENTS,
                    )
                reset = True
            elif message.address == PRESET_ADDRESS:
                changes.update(preset_prompt_state(self._preset(message)))
            else:
                changes.update(end_ab_mixing(dict([self._control(message)])))
        if changes:
            try:
                self._target.apply(changes)
            except ControlError as exc:  # a value the loaded model refuses: a user mistake
                addresses = ", ".join(short(m.address) for m in messages)
                raise OscRejected(f"{addresses}: {exc}") from None
        if reset:
            self._target.reset()
        self.handled += len(messages)

    def _preset(self, message: Message) -> Mapping[str, object]:
        if message.tags != "s":
            raise OscRejected(
                f"{PRESET_ADDRESS} takes a preset name (s), got ',{message.tags}'.",
                Cause.BAD_ARGUMENTS,
            )
        try:
            return self._load_preset(str(message.args[0]))
        except ValueError as exc:
            raise OscRejected(f"{PRESET_ADDRESS}: {exc}") from None

    def _control(self, message: Message) -> tuple[str, object]:
        """(control name, checked value) for a message to a control's address."""
        address = message.address
        name = self._addresses.get(address)
        if name is None:
            raise OscRejected(
                f"unknown address {short(address)}; see docs/OSC.md for the {PREFIX}/... "
                "addresses.",
                Cause.UNKNOWN_ADDRESS,
            )
        spec = CONTROLS[name]
        tags = _TAGS_BY_KIND[spec.kind]
        if len(message.tags) != 1 or message.tags not in tags:
            also = f" (or {', '.join(tags[1:])})" if len(tags) > 1 else ""
            raise OscRejected(
                f"{address} takes one argument of type {tags[0]}{also}, got ',{message.tags}'.",
                Cause.BAD_ARGUMENTS,
            )
        try:
            return name, spec.check(message.args[0])
        except ControlError as exc:
            raise OscRejected(f"{address}: {exc}") from None

    def _send(self, to: tuple[str, int], dgram: bytes) -> None:
        assert self._sock is not None
        try:
            self._sock.sendto(dgram, to)
        except OSError as exc:
            log.debug("OSC: cannot send to %s:%d (%s)", to[0], to[1], exc)

    def _send_feedback(self) -> None:
        to = self.config.feedback or self._last_sender
        if to is None or self._status is None:
            return
        try:
            status = self._status()
            messages = [build_message(f"{PREFIX}/status/fps", float(status.fps))]
            if status.latency_ms is not None:  # text mode has no input, hence no latency
                latency = float(status.latency_ms)
                messages.append(build_message(f"{PREFIX}/status/latency", latency))
            messages.append(build_message(f"{PREFIX}/status/prompt", status.prompt))
        except Exception:  # noqa: BLE001 - feedback must never end the server's thread
            self._feedback_errors += 1
            if self._feedback_errors == 1:  # once: this repeats every period
                log.exception("OSC: building the status feedback failed; control goes on")
            return
        for message in messages:
            self._send(to, message)
