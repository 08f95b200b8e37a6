"""Test servers and files for the debuginfod tests (fixtures in conftest.py use these).

- `Corpus`: stripped fixture programs alone in one directory, served (with their debug files)
  from another;
- `DebuginfodServer`: a real elfutils `debuginfod -F DIR` on a free port of 127.0.0.1;
- `FaultServer` / `start_fault_server`: our own HTTP server whose first path component picks a
  fault (``/slow``, ``/e500``, ``/missing``, ``/truncated``, ``/trickle``, ``/big``,
  ``/bignolen``; anything else serves the payload, recording the request headers);
- `ConnectionCounter`: a listening socket that counts the connections made to it (and closes
  them): the proof that a run made no network attempt;
- `env_for(urls, cache)`: the environment for a `ubt` or `debuginfod-find` subprocess.
"""
from __future__ import annotations

import http.server
import os
import socket
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.integration import REPO

UNSERVED = "threads-stripped"


@dataclass(frozen=True)
class Corpus:
    """Stripped binaries (alone in `bin_dir`), and what `served_dir` holds for the server."""

    served_dir: Path
    bin_dir: Path
    debug_dir: Path  # the original fixture directory (binary + .debug side by side)
    build_ids: dict[str, str]  # program name → build-id

    def binary(self, name: str) -> Path:
        return self.bin_dir / name

    def debug_file(self, name: str) -> Path:
        return self.debug_dir / f"{name}.debug"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class DebuginfodServer:
    """One `debuginfod -F DIR` process with its own database."""

    def __init__(self, served: Path, workdir: Path, probe_build_id: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"debuginfod-{self.port}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["debuginfod", "-F", str(served), "-p", str(self.port),
                 "-d", str(workdir / f"db-{self.port}.sqlite"), "-v"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self._wait_ready(f"{self.url}/buildid/{probe_build_id}/debuginfo")

    def _wait_ready(self, probe: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"debuginfod exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(probe, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"debuginfod did not serve {probe} within {timeout}s")

    def requests_seen(self) -> int:
        """How many /buildid requests the server has logged (its -v log)."""
        return self.log.read_text(errors="replace").count(" GET /buildid/")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class ConnectionCounter:
    """Accepts and at once closes connections on 127.0.0.1:`port` (a free one if 0)."""

    def __init__(self, port: int = 0) -> None:
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self._sock.listen(16)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            self.connections += 1
            conn.close()

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self._sock.close()


def env_for(urls: str | None, cache: Path, **extra: str) -> dict[str, str]:
    """Environment for a subprocess: DEBUGINFOD_* as given, nothing inherited of them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEBUGINFOD_")}
    if urls is not None:
        env["DEBUGINFOD_URLS"] = urls
    env["DEBUGINFOD_CACHE_PATH"] = str(cache)
    env["UBT_CACHE_DIR"] = str(cache.parent / (cache.name + "-ubt"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


@dataclass
class FaultServer:
    """Serves `payload` (a valid ELF) or faults; records requests per fault and headers."""

    url: str
    payload: bytes
    slow_s: float = 3.0
    hits: dict[str, int] = field(default_factory=dict)
    last_headers: dict[str, str] = field(default_factory=dict)


def _handler(state: FaultServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            try:
                self._answer()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up, as it should

        def _answer(self) -> None:
            fault = self.path.split("/")[1]
            state.hits[fault] = state.hits.get(fault, 0) + 1
            state.last_headers = dict(self.headers.items())
            body = state.payload
            if fault == "slow":
                time.sleep(state.slow_s)
            if fault == "e500":
                return self._send(500, b"boom")
            if fault == "missing":
                return self._send(404, b"")
            if fault == "truncated":
                self._head(200, len(body))
                self.wfile.write(body[: len(body) // 2])
                self.close_connection = True
                return None
            if fault == "bignolen":
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                for _ in range(64):
                    self.wfile.write(b"\0" * 65536)
                return None
            if fault == "trickle":  # headers at once, then 1 KiB every 0.2 s
                self._head(200, len(body))
                self.close_connection = True
                for i in range(0, len(body), 1024):
                    self.wfile.write(body[i:i + 1024])
                    self.wfile.flush()
                    time.sleep(0.2)
                return None
            if fault == "big":
                self._head(200, 1 << 30)
                self.close_connection = True
                return None
            return self._send(200, body)

        def _head(self, status: int, length: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(length))
            self.send_header("Last-Modified", "Mon, 02 Jan 2023 03:04:05 GMT")
            self.end_headers()

        def _send(self, status: int, body: bytes) -> None:
            self._head(status, len(body))
            self.wfile.write(body)

    return Handler


def start_fault_server(
        payload: bytes) -> tuple[FaultServer, http.server.ThreadingHTTPServer]:
    """Serve `payload` or faults from a thread; call ``httpd.shutdown()`` when done."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    state = FaultServer(f"http://127.0.0.1:{httpd.server_address[1]}", payload)
    httpd.RequestHandlerClass = _handler(state)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return state, httpd
