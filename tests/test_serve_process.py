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
