"""The MJPEG sink over real HTTP: several clients through OpenCV, a stalled raw socket, a
port already taken."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest
from support import Feeder, wait_for

from streamdit_live.mjpeg import MjpegSink
from streamdit_live.sink_base import SinkUnavailable
from streamdit_live.sinks import open_sink


def test_mjpeg_stream_reads_back_over_http_with_several_clients():
    with open_sink("mjpeg:127.0.0.1:0", width=96, height=64, fps=30.0) as sink, Feeder(sink):
        assert isinstance(sink, MjpegSink) and sink.port > 0
        assert sink.url == f"http://127.0.0.1:{sink.port}/stream.mjpg"
        index = urllib.request.urlopen(f"http://127.0.0.1:{sink.port}/", timeout=5).read()
        assert b"/stream.mjpg" in index
        first, second = cv2.VideoCapture(sink.url), cv2.VideoCapture(sink.url)
        try:
            assert first.isOpened() and second.isOpened()
            got = []
            for _ in range(8):
                for cap in (first, second):
                    ok, frame = cap.read()
                    assert ok and frame.shape == (64, 96, 3)
                    got.append(frame)
            assert wait_for(lambda: sink.clients == 2)
        finally:
            first.release()
            second.release()
        assert got[0].std() > 10  # not blank
        assert np.abs(got[0].astype(int) - got[-1].astype(int)).mean() > 3  # it moves
        snapshot = urllib.request.urlopen(
            f"http://127.0.0.1:{sink.port}/snapshot.jpg", timeout=5
        ).read()
        image = cv2.imdecode(np.frombuffer(snapshot, np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (64, 96, 3)
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"http://127.0.0.1:{sink.port}/nothing", timeout=5)


def test_a_stalled_mjpeg_client_never_blocks_writes():
    frame = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)  # ~200 kB
    with MjpegSink(256, 256, 30.0, port=0) as sink:
        stalled = socket.create_connection(("127.0.0.1", sink.port), timeout=5)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            stalled.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")  # then never reads
            sink.write(frame)
            assert wait_for(lambda: sink.clients == 1)
            start = time.monotonic()
            for _ in range(60):  # ~12 MB of JPEG the client never takes
                sink.write(frame)
            assert time.monotonic() - start < 5.0
            cap = cv2.VideoCapture(sink.url)  # a healthy client still gets frames
            with Feeder(sink):
                ok, got = cap.read()
            cap.release()
            assert ok and got.shape == (256, 256, 3)
        finally:
            stalled.close()


def test_mjpeg_port_in_use_is_unavailable_not_a_crash():
    with MjpegSink(32, 32, 30.0, port=0) as first:
        taken = f"127.0.0.1:{first.port}.*mjpeg:PORT"
        with pytest.raises(SinkUnavailable, match=taken):
            MjpegSink(32, 32, 30.0, port=first.port)
