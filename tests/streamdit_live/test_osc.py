"""The OSC server over real UDP: python-osc and oscsend clients, garbage, bursts, feedback."""

from __future__ import annotations

import queue
import shutil
import socket
import subprocess
from collections.abc import Iterator, Mapping

import pytest
from pythonosc.osc_message import OscMessage
from pythonosc.udp_client import SimpleUDPClient

from streamdit_live.controls import ControlError
from streamdit_live.metrics import StreamStatus
from streamdit_live.osc import (
    ERROR_ADDRESS,
    OscConfig,
    OscRejected,
    OscServer,
    build_message,
    control_addresses,
    parse_host_port,
)

TIMEOUT = 5.0


class Recorder:
    """A ControlTarget that hands every call to the test through a queue."""

    def __init__(self) -> None:
        self.calls: queue.Queue[tuple[str, dict]] = queue.Queue()

    def apply(self, changes: Mapping[str, object]) -> None:
        self.calls.put(("apply", dict(changes)))

    def reset(self) -> None:
        self.calls.put(("reset", {}))

    def next(self) -> tuple[str, dict]:
        return self.calls.get(timeout=TIMEOUT)


def load_preset(name: str) -> Mapping[str, object]:
    if name == "calm":
        return {"strength": 0.2, "prompt": "calm sea"}
    raise ValueError(f"unknown preset {name!r}; available presets: calm.")


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def server(recorder) -> Iterator[OscServer]:
    status = StreamStatus(fps=11.5, latency_ms=240.0, prompt="calm sea")
    with OscServer(
        OscConfig(port=0, feedback_period=0.1), recorder, load_preset, lambda: status
    ) as srv:
        yield srv


@pytest.fixture
def peer() -> Iterator[socket.socket]:
    """A plain UDP socket: sends raw datagrams and receives the server's replies."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(TIMEOUT)
    yield sock
    sock.close()


def receive(sock: socket.socket, address: str) -> OscMessage:
    """The next message to `address`, skipping others (feedback arrives in between)."""
    for _ in range(100):
        message = OscMessage(sock.recvfrom(65536)[0])
        if message.address == address:
            return message
    raise AssertionError(f"no {address} message arrived")


def test_address_space_is_derived_from_the_schema():
    addresses = control_addresses()
    for address in (
        "/streamdit/prompt",
        "/streamdit/prompt/a",
        "/streamdit/prompt/b",
        "/streamdit/crossfade",
        "/streamdit/strength",
        "/streamdit/seed",
        "/streamdit/mode",
        "/streamdit/pause",
    ):
        assert address in addresses
    assert "/streamdit/size" not in addresses  # startup-only controls are not live


def test_binds_to_localhost_by_default(server):
    assert server.address[0] == "127.0.0.1"
    assert OscConfig().host == "127.0.0.1" and OscConfig().port == 9000


def test_python_osc_client_sets_every_kind_of_control(server, recorder):
    client = SimpleUDPClient(*server.address)
    client.send_message("/streamdit/prompt", "a forest in fog")
    assert recorder.next() == ("apply", {"prompt": "a forest in fog"})
    client.send_message("/streamdit/prompt/b", "a desert")
    assert recorder.next() == ("apply", {"prompt_b": "a desert"})
    client.send_message("/streamdit/crossfade", 1)  # an int for a float, as TouchOSC sends
    assert recorder.next() == ("apply", {"crossfade": 1.0})
    client.send_message("/streamdit/strength", 0.25)
    assert recorder.next() == ("apply", {"strength": 0.25})
    client.send_message("/streamdit/seed", 1234)
    assert recorder.next() == ("apply", {"seed": 1234})
    client.send_message("/streamdit/mode", "text")
    kind, changes = recorder.next()
    assert changes["mode"].value == "text"
    client.send_message("/streamdit/pause", 1)
    assert recorder.next() == ("apply", {"pause": True})
    client.send_message("/streamdit/preset", "calm")
    assert recorder.next() == ("apply", {"strength": 0.2, "prompt": "calm sea"})
    client.send_message("/streamdit/reset", [])
    assert recorder.next() == ("reset", {})


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"\x00\xffgarbage\x13\x37", "not a valid OSC packet"),
        (b"/streamdit/prompt\x00\x00\x00,s\x00\x00\xff\xfe\x00\x00", "not a valid OSC packet"),
        (b"x" * 20000, "over the 16384-byte limit"),
        (build_message("/streamdit/strength", "loud"), "strength must be a number from 0 to 1"),
        (build_message("/streamdit/strength", 3.0), "got 3.0"),
        (build_message("/streamdit/seed", 2.5), "seed must be an integer"),
        (build_message("/streamdit/mode", 1), "mode must be one of video, text"),
        (build_message("/streamdit/prompt", 5), "prompt must be text"),
        (build_message("/streamdit/crossfade"), "takes exactly one argument, got 0"),
        (build_message("/streamdit/crossfade", 0.1, 0.2), "takes exactly one argument, got 2"),
        (build_message("/streamdit/nope", 1), "unknown address '/streamdit/nope'"),
        (build_message("/streamdit/size", "512x512"), "unknown address"),
        (build_message("/streamdit/preset", "stormy"), "unknown preset 'stormy'"),
    ],
)
def test_bad_packets_get_an_error_reply_and_the_server_keeps_running(
    server, recorder, peer, payload, expected
):
    peer.sendto(payload, server.address)
    reply = receive(peer, ERROR_ADDRESS)
    assert expected in reply.params[0]
    assert recorder.calls.empty()  # nothing was applied
    # Still alive: a good message right after is applied.
    peer.sendto(build_message("/streamdit/seed", 5), server.address)
    assert recorder.next() == ("apply", {"seed": 5})
    assert server.rejected >= 1


def test_a_burst_arrives_whole_and_in_order(server, recorder):
    client = SimpleUDPClient(*server.address)
    count = 300
    for i in range(count):
        client.send_message("/streamdit/crossfade", i / count)
    values = [recorder.next()[1]["crossfade"] for _ in range(count)]
    assert values == pytest.approx([i / count for i in range(count)], abs=1e-6)


def test_feedback_goes_to_the_last_sender(server, peer):
    peer.sendto(build_message("/streamdit/seed", 1), server.address)
    fps = receive(peer, "/streamdit/status/fps")
    assert fps.params == [pytest.approx(11.5)]
    assert receive(peer, "/streamdit/status/latency").params == [pytest.approx(240.0)]
    assert receive(peer, "/streamdit/status/prompt").params == ["calm sea"]


def test_feedback_goes_to_a_fixed_address_when_configured(recorder, peer):
    status = StreamStatus(fps=3.0, latency_ms=None, prompt="p")
    config = OscConfig(port=0, feedback=peer.getsockname(), feedback_period=0.05)
    with OscServer(config, recorder, load_preset, lambda: status):
        assert receive(peer, "/streamdit/status/fps").params == [pytest.approx(3.0)]
        # No latency in text mode: the prompt follows the fps directly.
        assert OscMessage(peer.recvfrom(65536)[0]).address == "/streamdit/status/prompt"


def test_a_failing_target_is_reported_not_fatal(peer):
    class Broken(Recorder):
        def apply(self, changes):
            raise RuntimeError("engine exploded")

    broken = Broken()
    with OscServer(OscConfig(port=0), broken, load_preset) as srv:
        peer.sendto(build_message("/streamdit/seed", 1), srv.address)
        assert "engine exploded" in receive(peer, ERROR_ADDRESS).params[0]
        peer.sendto(build_message("/streamdit/reset"), srv.address)
        assert broken.next() == ("reset", {})


def test_a_value_the_engine_refuses_is_a_user_error_not_an_internal_one():
    """chunk_size 3 passes the schema's range but not the loaded model (the engine's check):
    the sender gets the engine's sentence as an OSC error, no traceback, no "internal error"."""

    class Picky(Recorder):
        def apply(self, changes):
            raise ControlError("chunk_size must divide the model's 4-frame buffer, got 3.")

    srv = OscServer(OscConfig(port=0), Picky(), load_preset)
    with pytest.raises(OscRejected, match=r"^/streamdit/chunk_size: chunk_size must divide"):
        srv.handle_packet(build_message("/streamdit/chunk_size", 3))
    with pytest.raises(OscRejected, match=r"^/streamdit/preset: chunk_size must divide"):
        srv.handle_packet(build_message("/streamdit/preset", "calm"))
    srv.stop()


def test_a_bundle_applies_whole_in_one_call_or_not_at_all(recorder):
    from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder

    def bundle(*messages: tuple[str, object]) -> bytes:
        builder = OscBundleBuilder(IMMEDIATELY)
        for address, value in messages:
            builder.add_content(OscMessage(build_message(address, value)))
        return builder.build().dgram

    srv = OscServer(OscConfig(port=0), recorder, load_preset)
    srv.handle_packet(bundle(("/streamdit/prompt", "fog"), ("/streamdit/strength", 0.5)))
    assert recorder.next() == ("apply", {"prompt": "fog", "strength": 0.5})  # exact in float32
    assert recorder.calls.empty()  # one call, not two
    with pytest.raises(OscRejected, match="strength"):  # one bad message spoils the bundle
        srv.handle_packet(bundle(("/streamdit/prompt", "rain"), ("/streamdit/strength", 7.0)))
    assert recorder.calls.empty()
    srv.stop()


def test_a_failing_status_callback_does_not_kill_the_server(recorder, peer):
    """Feedback runs on the server's thread: an exception there (a prompt that cannot be
    encoded, a bug in the status source) must not end OSC control for the rest of the show."""
    import threading

    failed = threading.Event()

    def status() -> StreamStatus:
        failed.set()
        raise RuntimeError("status exploded")

    config = OscConfig(port=0, feedback=peer.getsockname(), feedback_period=0.01)
    with OscServer(config, recorder, load_preset, status) as srv:
        assert failed.wait(TIMEOUT)
        failed.clear()
        assert failed.wait(TIMEOUT)  # it tried again: the thread is still serving
        peer.sendto(build_message("/streamdit/seed", 3), srv.address)
        assert recorder.next() == ("apply", {"seed": 3})


def test_a_busy_port_is_one_sentence(server, recorder):
    with pytest.raises(OSError, match=r"cannot listen for OSC on .*pick another port"):
        OscServer(OscConfig(port=server.address[1]), recorder, load_preset).start()


def test_a_failed_start_leaks_no_file_descriptors(server, recorder):
    """Each failed start used to leave the wake-up socket pair open: two descriptors."""
    import os

    before = len(os.listdir("/proc/self/fd"))
    busy = OscServer(OscConfig(port=server.address[1]), recorder, load_preset)
    for _ in range(3):
        with pytest.raises(OSError):
            busy.start()
    # Counted while `busy` is still referenced: garbage collection would hide a leak.
    assert len(os.listdir("/proc/self/fd")) == before


def test_parse_host_port():
    assert parse_host_port("192.168.1.5:9001") == ("192.168.1.5", 9001)
    for bad in ("nohost", ":9000", "host:port", "host:70000"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_host_port(bad)


@pytest.mark.skipif(shutil.which("oscsend") is None, reason="oscsend (liblo-tools) not installed")
def test_oscsend_from_liblo_tools(server, recorder):
    host, port = server.address
    for args, expected in (
        (["/streamdit/prompt", "s", "neon rain"], {"prompt": "neon rain"}),
        (["/streamdit/strength", "f", "0.75"], {"strength": 0.75}),
        (["/streamdit/strength", "i", "1"], {"strength": 1.0}),
        (["/streamdit/pause", "T"], {"pause": True}),
    ):
        subprocess.run(["oscsend", host, str(port), *args], check=True, timeout=TIMEOUT)
        assert recorder.next() == ("apply", expected)


def test_the_docs_list_every_address():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "OSC.md").read_text(encoding="utf-8")
    for address in [*control_addresses(), "/streamdit/preset", "/streamdit/reset"]:
        assert f"`{address}`" in doc, f"docs/OSC.md does not document {address}"
    for address in ("fps", "latency", "prompt"):
        assert f"`/streamdit/status/{address}`" in doc
    assert f"`{ERROR_ADDRESS}`" in doc
