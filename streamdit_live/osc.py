"""OSC control: a UDP server whose address space is derived from the control schema.

`/streamdit/<control>` sets a control (`prompt_a` and `prompt_b` are `/streamdit/prompt/a`
and `/streamdit/prompt/b`); `/streamdit/preset s` loads a preset and `/streamdit/reset` restarts
the stream. Controls that need a restart of the app (model, size, fps) are not exposed.

Anything wrong with a packet (garbage, oversized, unknown address, wrong type or range) is
logged, answered with `/streamdit/error s` to the sender and dropped; the server keeps going.
Once a second it sends `/streamdit/status/{fps,latency,prompt}` to `--osc-feedback` or, if
none is set, to the last sender.

Why not python-osc's own servers: the threading server spawns a thread per packet, which
reorders and drops bursts from a fader; `socketserver`'s blocking loop cannot send feedback
on a timer. So: one thread, one socket with a large receive buffer, python-osc's parser.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket, ParseError

from streamdit_live.controls import CONTROLS, ControlError, Scope
from streamdit_live.metrics import StreamStatus

log = logging.getLogger(__name__)

PREFIX = "/streamdit"
ERROR_ADDRESS = f"{PREFIX}/error"
DEFAULT_PORT = 9000
# The kernel may cap this (net.core.rmem_max); whatever it grants still beats the default.
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024
MAX_DATAGRAM = 65536  # larger than any UDP payload, so recvfrom never truncates


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
    """Where checked changes go: the engine (through its own queue) or a test double."""

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


class OscRejected(Exception):
    """A message the server drops; the text is what the sender gets back."""


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
        self._stopping.set()
        if self._wake is not None:
            self._wake[1].send(b"x")
        if self._thread is not None:
            self._thread.join(timeout=5.0)
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
            timeout = max(0.0, next_feedback - time.monotonic())
            readable, _, _ = select.select([self._sock, self._wake[0]], [], [], timeout)
            if self._sock in readable:
                self._drain()
            if time.monotonic() >= next_feedback:
                self._send_feedback()
                next_feedback = time.monotonic() + self.config.feedback_period

    def _drain(self) -> None:
        """Handle every datagram waiting in the socket (a fader sends bursts)."""
        assert self._sock is not None
        while True:
            try:
                data, sender = self._sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. an ICMP error surfacing on the socket
                log.warning("OSC: receive failed (%s); still listening", exc)
                return
            self._last_sender = sender[:2]
            try:
                self.handle_packet(data)
            except OscRejected as exc:
                self.rejected += 1
                log.warning("OSC from %s:%d: %s", sender[0], sender[1], exc)
                self._send(sender[:2], build_message(ERROR_ADDRESS, str(exc)))
            except Exception as exc:  # noqa: BLE001 - a bug in a target must not stop OSC
                self.rejected += 1
                log.exception("OSC: failed to apply a message from %s:%d", *sender[:2])
                self._send(sender[:2], build_message(ERROR_ADDRESS, f"internal error: {exc}"))

    def handle_packet(self, data: bytes) -> None:
        """Parse and apply one datagram; raise OscRejected with the reason to send back."""
        if len(data) > self.config.max_packet:
            raise OscRejected(
                f"packet of {len(data)} bytes is over the {self.config.max_packet}-byte limit."
            )
        try:
            messages = OscPacket(data).messages
        # The parser lets some errors through unwrapped (bad UTF-8 in a string, for one).
        except (ParseError, ValueError, IndexError, TypeError):
            raise OscRejected(f"not a valid OSC packet ({len(data)} bytes).") from None
        # Check every message of a bundle, then apply its changes in one `apply` (which the
        # engine checks as a whole), so a bundle applies whole or not at all.
        changes: dict[str, object] = {}
        reset = False
        for m in messages:
            change = self._interpret(m.message.address, list(m.message.params))
            if change is None:
                reset = True
            else:
                changes.update(change)
        if changes:
            try:
                self._target.apply(changes)
            except ControlError as exc:  # a value the loaded model refuses: a user mistake
                addresses = ", ".join(m.message.address for m in messages)
                raise OscRejected(f"{addresses}: {exc}") from None
        if reset:
            self._target.reset()
        self.handled += len(messages)

    def _interpret(self, address: str, params: list[object]) -> dict[str, object] | None:
        """The control changes a message asks for, or None for a reset."""
        if address == f"{PREFIX}/reset":
            return None
        if address == f"{PREFIX}/preset":
            name = self._single(address, params)
            if not isinstance(name, str):
                raise OscRejected(f"{address} takes a preset name (s), got {name!r}.")
            try:
                return dict(self._load_preset(name))
            except ValueError as exc:
                raise OscRejected(str(exc)) from None
        name = self._addresses.get(address)
        if name is None:
            raise OscRejected(
                f"unknown address {address!r}; see docs/OSC.md for the {PREFIX}/... addresses."
            )
        try:
            return {name: CONTROLS[name].check(self._single(address, params))}
        except ControlError as exc:
            raise OscRejected(f"{address}: {exc}") from None

    @staticmethod
    def _single(address: str, params: list[object]) -> object:
        if len(params) != 1:
            raise OscRejected(f"{address} takes exactly one argument, got {len(params)}.")
        return params[0]

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
