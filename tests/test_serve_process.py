"""The web service as a real process: Ctrl+C, and clients that stall, against a server on a real socket."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from crackseg.io.images import encode_image
from tests.test_serve import drawn_cracks_photo

REPO = Path(__file__).resolve().parents[1]

# A server around the slow stand-in network (tests.fakes), run as `crackseg serve` runs its app.
SERVER = """
import sys
from crackseg.serve import create_app
from crackseg.serve.server import run_server
from tests.fakes import slow_segmenter
port, seconds_per_tile, grace_s = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
app = create_app(slow_segmenter(seconds_per_tile), workers=2)
sys.exit(run_server(app, "127.0.0.1", port, grace_s=grace_s))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`SERVER` in a subprocess: started, then waited for until it answers."""

    def __init__(self, seconds_per_tile: float, grace_s: float):
        self.port = free_port()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        args = [sys.executable, "-c", SERVER, str(self.port), str(seconds_per_tile), str(grace_s)]
        self.process = subprocess.Popen(args, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                self.health()
                return
            except OSError:
                time.sleep(0.1)
        self.process.kill()
        raise AssertionError(f"the server did not start: {self.process.communicate()[1]}")

    def health(self) -> dict:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            connection.request("GET", "/api/health")
            return json.loads(connection.getresponse().read())
        finally:
            connection.close()

    def post_in_background(self, size: int) -> dict:
        """POSTs a size×size photo from a thread; the dict gets "status" (or "error" when the connection drops)."""
        answer: dict = {}
        body, content_type = multipart(encode_image(drawn_cracks_photo(size, size), ".png"))

        def post():
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            try:
                connection.request("POST", "/api/predict", body, {"Content-Type": content_type})
                answer["status"] = connection.getresponse().status
            except OSError as err:
                answer["error"] = err
            finally:
                connection.close()

        answer["thread"] = threading.Thread(target=post, daemon=True)
        answer["thread"].start()
        return answer

    def wait_pending(self, count: int) -> None:
        deadline = time.monotonic() + 30
        while self.health()["pending"] < count:
            assert time.monotonic() < deadline, "the uploads never reached the workers"
            time.sleep(0.05)

    def stopped_within(self, seconds: float) -> tuple[int, str]:
        """(exit status, stderr) of the process, which must exit within `seconds`."""
        try:
            _, stderr = self.process.communicate(timeout=seconds)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"still running {seconds} s after Ctrl+C: {self.process.communicate()[1]}") from None
        return self.process.returncode, stderr

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


def multipart(data: bytes, name: str = "photo.png") -> tuple[bytes, str]:
    boundary = "crackseg-test-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@pytest.fixture
def server_factory():
    servers = []

    def start(seconds_per_tile: float = 0.1, grace_s: float = 3) -> Server:
        servers.append(Server(seconds_per_tile, grace_s))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.mark.skipif(sys.platform == "win32", reason="Ctrl+C is a POSIX signal here")
def test_ctrl_c_lets_photos_in_flight_finish_then_stops_the_rest_and_exits_0(server_factory):
    grace_s = 3.0
    server = server_factory(seconds_per_tile=0.1, grace_s=grace_s)
    long_one = server.post_in_background(640)  # 169 tiles: about 17 s of work, far past the grace
    short_one = server.post_in_background(128)  # 9 tiles: answered within the grace
    server.wait_pending(2)
    interrupted = time.monotonic()
    server.process.send_signal(signal.SIGINT)
    status, stderr = server.stopped_within(grace_s + 8)
    # exiting at all means the long photo's worker stopped: the interpreter waits for its threads at exit
    assert time.monotonic() - interrupted < grace_s + 8
    assert status == 0, stderr
    assert "Traceback" not in stderr
    short_one["thread"].join(timeout=5)
    assert short_one.get("status") == 200
    long_one["thread"].join(timeout=5)
    assert long_one.get("status") == 503  # told the server is stopping, not dropped


@pytest.mark.skipif(sys.platform == "win32", reason="Ctrl+C is a POSIX signal here")
def test_a_second_ctrl_c_stops_at_once_without_a_traceback(server_factory):
    server = server_factory(seconds_per_tile=0.1, grace_s=60)
    server.post_in_background(640)
    server.wait_pending(1)
    server.process.send_signal(signal.SIGINT)
    time.sleep(0.5)
    interrupted = time.monotonic()
    server.process.send_signal(signal.SIGINT)
    status, stderr = server.stopped_within(10)
    assert time.monotonic() - interrupted < 10
    assert status == 130, stderr
    assert "Traceback" not in stderr and "second Ctrl+C" in stderr


@pytest.fixture
def threaded_server():
    """A server in a thread of this process on a real socket: `start(app)` returns its port."""
    import uvicorn

    started = []

    def start(app) -> int:
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        started.append((server, thread))
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        return port

    yield start
    for server, thread in started:
        server.should_exit = True
        thread.join(timeout=10)


def test_a_stalled_upload_is_dropped_with_408_and_the_server_serves_others(threaded_server):
    from crackseg.serve import create_app
    from tests.fakes import darkness_segmenter

    port = threaded_server(create_app(darkness_segmenter(), body_timeout_s=1))
    body, content_type = multipart(encode_image(drawn_cracks_photo(), ".png"))
    head = (
        f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as stalled:
        stalled.sendall(head + body[:200])  # the headers and a little of the body, then nothing
        sent_at = time.monotonic()
        health = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        health.request("GET", "/api/health")
        assert health.getresponse().status == 200  # others are served meanwhile
        answer = b""
        while chunk := stalled.recv(65536):  # read until the server closes the connection
            answer += chunk
        waited = time.monotonic() - sent_at
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"stalled" in answer
    assert 0.9 < waited < 5
    # a slow upload that keeps sending is never cut off, however long it takes in all
    with socket.create_connection(("127.0.0.1", port), timeout=30) as slow:
        pieces = [head + body[:200], body[200:1000], body[1000:2000], body[2000:]]
        for piece in pieces:
            slow.sendall(piece)
            time.sleep(0.6)
        assert slow.recv(65536).startswith(b"HTTP/1.1 200")


def test_body_timeout_must_be_a_positive_number_of_seconds(capsys):
    from crackseg.cli import main

    for bad in ("0", "-5", "nan", "inf", "soon"):
        with pytest.raises(SystemExit):
            main(["serve", "--body-timeout", bad])
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert "--body-timeout" in error and "positive number of seconds" in error and "Traceback" not in error
