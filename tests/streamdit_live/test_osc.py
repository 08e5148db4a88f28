"""The OSC server over real UDP: python-osc and oscsend clients, garbage, bursts, feedback."""

from __future__ import annotations

import logging
import queue
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator, Mapping

import pytest
from pythonosc.osc_message import OscMessage
from pythonosc.udp_client import SimpleUDPClient

from streamdit_live.controls import ControlError, Controls, check_prompt_effect, prompt_mix
from streamdit_live.metrics import StreamStatus
from streamdit_live.osc import (
    ERROR_ADDRESS,
    Cause,
    OscConfig,
    OscRejected,
    OscServer,
    RejectLog,
    build_message,
    control_addresses,
    parse_host_port,
)

TIMEOUT = 5.0


class Recorder:
    """A ControlTarget that keeps and checks the controls as the engine does and hands every
    applied call to the test through a queue."""

    def __init__(self) -> None:
        self.calls: queue.Queue[tuple[str, dict]] = queue.Queue()
        self.controls = Controls()

    def apply(self, changes: Mapping[str, object]) -> None:
        after = self.controls.replace(changes)
        check_prompt_effect(after, changes)  # as Engine.apply does
        self.controls = after
        self.calls.put(("apply", dict(changes)))

    def reset(self) -> None:
        self.calls.put(("reset", {}))

    def next(self) -> tuple[str, dict]:
        return self.calls.get(timeout=TIMEOUT)


PRESETS = {
    "calm": {"strength": 0.2, "prompt": "calm sea"},
    "deck": {"prompt_a": "liquid chrome", "prompt_b": "embers", "crossfade": 0.0},
    "fast": {"strength": 0.4},
}
ENDED_DECK = {"prompt_a": "", "prompt_b": "", "crossfade": 0.0}  # what a plain prompt adds


def load_preset(name: str) -> Mapping[str, object]:
    if name in PRESETS:
        return PRESETS[name]
    raise ValueError(f"unknown preset {name!r}; available presets: calm, deck, fast.")


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
    assert recorder.next() == ("apply", {"prompt": "a forest in fog", **ENDED_DECK})
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
    assert recorder.next() == ("apply", {"strength": 0.2, "prompt": "calm sea", **ENDED_DECK})
    client.send_message("/streamdit/reset", [])
    assert recorder.next() == ("reset", {})


def pad(text: bytes) -> bytes:
    """An OSC string: NUL-terminated and NUL-padded to a multiple of 4 bytes."""
    return text + b"\0" * (4 - len(text) % 4)


def raw(address: str, tags: str, payload: bytes = b"") -> bytes:
    return pad(address.encode()) + pad(tags.encode()) + payload


def bundle(*elements: bytes) -> bytes:
    out = b"#bundle\0" + struct.pack(">Q", 1)  # time tag 1: immediately
    for element in elements:
        out += struct.pack(">i", len(element)) + element
    return out


def nested(depth: int) -> bytes:
    """A seed message inside `depth` bundles."""
    packet = build_message("/streamdit/seed", 3)
    for _ in range(depth):
        packet = bundle(packet)
    return packet


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"\x00\xffgarbage\x13\x37", "not a valid OSC packet"),
        (b"/streamdit/prompt\x00\x00\x00,s\x00\x00\xff\xfe\x00\x00", "not UTF-8"),
        (b"x" * 20000, "over the 16384-byte limit"),
        # Issue 8: each of these used to be applied (pause on, strength 0.0, a reset).
        (raw("/streamdit/pause", ",ST", b"\x13\x37junk"), "type tag 'S' is not used"),
        (raw("/streamdit/strength", ",f", b"\x3f\x40"), "needs 4 bytes, 2 left"),
        (build_message("/streamdit/reset", 1), "/streamdit/reset takes no arguments, got ',i'"),
        (raw("/streamdit/reset", ",", b"JUNK"), "4 bytes after the arguments"),
        (raw("/streamdit/seed", ",i", struct.pack(">i", 7) + b"JUNK"), "4 bytes after"),
        (raw("/streamdit/strength", ",ff", struct.pack(">f", 0.3)), "argument 2 (f) needs"),
        (pad(b"/streamdit/seed") + struct.pack(">i", 9), "missing the type tag string"),
        (b"/streamdit/prompt\0xy" + pad(b",s") + b"fog\0", "not padded with NUL bytes"),
        (raw("/streamdit/seed", ",b", b"\0\0\0\0"), "type tag 'b' is not used"),
        (b"#bundle\0" + struct.pack(">Q", 1), "empty bundle"),
        (bundle(build_message("/streamdit/seed", 1))[:-4], "does not fit"),
        (nested(9), "bundles may nest at most 8 deep"),
        (nested(700), "bundles may nest at most 8 deep"),  # was a RecursionError traceback
        # Well-formed, but not what the schema declares for the address.
        (build_message("/streamdit/strength", "loud"), "strength takes one argument of type f"),
        (build_message("/streamdit/strength", 3.0), "got 3.0"),
        (build_message("/streamdit/strength", True), "type f (or d, i, h), got ',T'"),
        (build_message("/streamdit/pause", "yes"), "pause takes one argument of type T"),
        (build_message("/streamdit/pause", 2), "pause must be true or false"),
        (build_message("/streamdit/seed", 2.5), "seed must be an integer"),
        (build_message("/streamdit/mode", 1), "mode takes one argument of type s"),
        (build_message("/streamdit/prompt", 5), "prompt takes one argument of type s"),
        (build_message("/streamdit/prompt", "x" * 2000), "at most 1000 characters"),
        (build_message("/streamdit/crossfade"), "got ','"),
        (build_message("/streamdit/crossfade", 0.1, 0.2), "got ',ff'"),
        (build_message("/streamdit/crossfade", 0.5), "crossfade has no effect without"),
        (build_message("/streamdit/nope", 1), "unknown address /streamdit/nope"),
        (build_message("/streamdit/size", "512x512"), "unknown address"),
        (build_message("/streamdit/preset", "stormy"), "unknown preset 'stormy'"),
        (build_message("/streamdit/preset", 3), "takes a preset name (s), got ',i'"),
    ],
)
def test_bad_packets_get_an_error_reply_and_change_nothing(
    server, recorder, peer, payload, expected
):
    before = recorder.controls
    peer.sendto(payload, server.address)
    reply = receive(peer, ERROR_ADDRESS)
    assert expected in reply.params[0]
    assert len(reply.params[0]) <= 300  # never an echo of a 16 KiB packet
    assert recorder.calls.empty()  # nothing was applied, no reset
    assert recorder.controls == before
    # Still alive: a good message right after is applied.
    peer.sendto(build_message("/streamdit/seed", 5), server.address)
    assert recorder.next() == ("apply", {"seed": 5})
    assert server.rejected == 1


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (raw("/streamdit/pause", ",T"), {"pause": True}),
        (raw("/streamdit/pause", ",F"), {"pause": False}),
        (build_message("/streamdit/pause", 1.0), {"pause": True}),
        (raw("/streamdit/seed", ",h", struct.pack(">q", 77)), {"seed": 77}),
        (raw("/streamdit/strength", ",d", struct.pack(">d", 0.125)), {"strength": 0.125}),
        (build_message("/streamdit/seed", 42.0), {"seed": 42}),
        (nested(7), {"seed": 3}),  # 7 bundles around it: within the limit of 8
        (pad(b"/streamdit/reset"), "reset"),  # no type tag string: OSC 1.0 for no arguments
    ],
)
def test_well_formed_variants_senders_use_are_applied(server, recorder, payload, expected):
    server.handle_packet(payload)
    kind, changes = recorder.next()
    assert changes == expected if kind == "apply" else kind == expected


def test_a_crossfade_after_b_is_set_and_a_prompt_ends_the_deck(server, recorder):
    """The A/B model over OSC: B then crossfade blends; a plain prompt ends the blend."""
    server.handle_packet(build_message("/streamdit/prompt", "fog"))
    server.handle_packet(build_message("/streamdit/prompt/b", "fire"))
    server.handle_packet(build_message("/streamdit/crossfade", 0.5))
    assert prompt_mix(recorder.controls).describe() == "fog -> fire @0.50"
    server.handle_packet(build_message("/streamdit/prompt", "rain"))
    assert prompt_mix(recorder.controls).describe() == "rain"
    assert recorder.controls.crossfade == 0.0 and not recorder.controls.prompt_b


def test_a_prompt_after_an_ab_preset_takes_effect(server, recorder):
    """Issue 8: after the vj-crossfade preset, /streamdit/prompt changed nothing, 375 times."""
    server.handle_packet(build_message("/streamdit/preset", "deck"))
    assert prompt_mix(recorder.controls).describe() == "liquid chrome"
    for i in range(20):
        server.handle_packet(build_message("/streamdit/prompt", f"scene {i}"))
        assert prompt_mix(recorder.controls).describe() == f"scene {i}"
    # And a preset replaces the whole prompt state instead of merging into the deck.
    server.handle_packet(build_message("/streamdit/preset", "deck"))
    server.handle_packet(build_message("/streamdit/crossfade", 1.0))
    server.handle_packet(build_message("/streamdit/preset", "calm"))
    assert prompt_mix(recorder.controls).describe() == "calm sea"
    # A preset with no prompt in it keeps the look on screen.
    server.handle_packet(build_message("/streamdit/preset", "fast"))
    assert prompt_mix(recorder.controls).describe() == "calm sea"
    assert recorder.controls.strength == 0.4


def test_a_flood_of_bad_packets_logs_a_line_per_cause_not_per_packet(
    server, recorder, peer, caplog
):
    """Issue 8: 100,000 bad packets wrote 70-122 MB to stderr, with a traceback for every
    deeply nested bundle. Each packet still gets its reply; the log gets one line per cause
    (then a count per period, flushed at the latest when the server stops)."""
    kinds = [
        b"\x00\xffgarbage",
        raw("/streamdit/strength", ",f", b"\x3f\x40"),
        build_message("/streamdit/reset", 1),
        build_message("/streamdit/nope", 1),
        build_message("/streamdit/strength", 3.0),
        nested(600),
    ]
    rounds = 200
    with caplog.at_level(logging.INFO, logger="streamdit_live.osc"):
        for _ in range(rounds):
            for payload in kinds:
                peer.sendto(payload, server.address)
            for _ in kinds:  # one reply per packet; waiting for them paces the sender
                receive(peer, ERROR_ADDRESS)
        server.stop()
    assert server.rejected == rounds * len(kinds)
    assert recorder.calls.empty()
    lines = [r for r in caplog.records if r.name == "streamdit_live.osc"]
    assert len(lines) <= 2 * len(kinds)  # the first of each cause, then one count each
    assert not any(r.exc_info for r in lines)  # no traceback
    assert sum(len(r.getMessage()) for r in lines) < 4000
    counted = "\n".join(r.getMessage() for r in lines)
    assert f"refused {rounds - 1} more bundles nested too deep" in counted


def test_the_reject_log_is_rate_limited_per_cause():
    log = RejectLog(period=10.0)
    assert log.note(Cause.MALFORMED, "junk", now=0.0)  # the first is logged at once
    assert log.note(Cause.TOO_DEEP, "deep", now=0.5)  # another cause has its own window
    assert not any(log.note(Cause.MALFORMED, f"junk {i}", now=1.0) for i in range(1000))
    assert log.due(now=9.9) == []
    (line,) = log.due(now=10.0)
    assert line.startswith("refused 1000 more malformed packets in the last 10 s")
    assert line.endswith("(the last: junk 999)")
    # Still coming: counted in the next window, not logged again one by one.
    assert not log.note(Cause.MALFORMED, "junk", now=11.0)
    assert log.due(now=20.0) == [
        "refused 1 more malformed packets in the last 10 s (the last: junk)"
    ]
    # Quiet for a whole period: the window closes and the next one is logged at once.
    assert log.due(now=30.0) == []
    assert log.note(Cause.MALFORMED, "junk again", now=31.0)
    assert log.due(now=31.0, final=True) == []  # nothing counted since: no line


def test_a_burst_arrives_whole_and_in_order(server, recorder):
    client = SimpleUDPClient(*server.address)
    client.send_message("/streamdit/prompt/b", "fire")  # a crossfade needs a B to blend to
    assert recorder.next() == ("apply", {"prompt_b": "fire"})
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

    def of(*messages: tuple[str, object]) -> bytes:
        """A bundle as python-osc builds it."""
        builder = OscBundleBuilder(IMMEDIATELY)
        for address, value in messages:
            builder.add_content(OscMessage(build_message(address, value)))
        return builder.build().dgram

    srv = OscServer(OscConfig(port=0), recorder, load_preset)
    srv.handle_packet(of(("/streamdit/prompt", "fog"), ("/streamdit/strength", 0.5)))
    assert recorder.next() == ("apply", {"prompt": "fog", **ENDED_DECK, "strength": 0.5})
    assert recorder.calls.empty()  # one call, not two
    with pytest.raises(OscRejected, match="strength"):  # one bad message spoils the bundle
        srv.handle_packet(of(("/streamdit/prompt", "rain"), ("/streamdit/strength", 7.0)))
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
        (["/streamdit/prompt", "s", "neon rain"], {"prompt": "neon rain", **ENDED_DECK}),
        (["/streamdit/strength", "f", "0.75"], {"strength": 0.75}),
        (["/streamdit/strength", "i", "1"], {"strength": 1.0}),
        (["/streamdit/pause", "T"], {"pause": True}),
        (["/streamdit/pause", "F"], {"pause": False}),
    ):
        subprocess.run(["oscsend", host, str(port), *args], check=True, timeout=TIMEOUT)
        assert recorder.next() == ("apply", expected)
    subprocess.run(["oscsend", host, str(port), "/streamdit/reset"], check=True, timeout=TIMEOUT)
    assert recorder.next() == ("reset", {})  # liblo sends ',' and no arguments


def test_the_docs_list_every_address():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "OSC.md").read_text(encoding="utf-8")
    for address in [*control_addresses(), "/streamdit/preset", "/streamdit/reset"]:
        assert f"`{address}`" in doc, f"docs/OSC.md does not document {address}"
    for address in ("fps", "latency", "prompt"):
        assert f"`/streamdit/status/{address}`" in doc
    assert f"`{ERROR_ADDRESS}`" in doc
