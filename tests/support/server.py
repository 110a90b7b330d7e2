"""A real instance of the service: `python -m app` under uvicorn on a free port, in a subprocess."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

import httpx

from app.admission.auth import issue_token

TEST_SECRET = "test-secret-" + "x" * 40
ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """One running instance; stdout (the JSON log) and stderr are captured to files."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.port = free_port()
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", ""),
            "ENVIRONMENT": "development",
            "HOST": "127.0.0.1",
            "WEBSOCKET_SERVICE_PORT": str(self.port),
            "JWT_SECRET": TEST_SECRET,
            "LOG_LEVEL": "info",
            # Most tests send faster than any person types; the rate-limit tests set their own.
            "RATE_LIMIT_PER_SECOND": "1000000",
            "RATE_LIMIT_BURST": "1000000",
            **(env or {}),
        }
        self._dir = tempfile.TemporaryDirectory(prefix="texflow-server-")
        self.stdout_path = Path(self._dir.name) / "stdout.log"
        self.stderr_path = Path(self._dir.name) / "stderr.log"
        self._stdout: IO[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, project_id: str, token: str | None = None) -> str:
        url = f"ws://127.0.0.1:{self.port}/ws/{project_id}"
        return f"{url}?token={token}" if token is not None else url

    def token(self, user_id: str, **kwargs: object) -> str:
        secret = self.env.get("JWT_SECRET") or TEST_SECRET
        return issue_token(secret, user_id=user_id, **kwargs)  # type: ignore[arg-type]

    def start(self) -> ServerProcess:
        self._stdout = self.stdout_path.open("wb")
        self._stderr = self.stderr_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app"],
            cwd=self._dir.name,
            env={**self.env, "PYTHONPATH": str(ROOT)},
            stdout=self._stdout,
            stderr=self._stderr,
        )
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        """Poll /health until the server answers; fail with its output if it exits or hangs."""
        deadline = time.monotonic() + START_TIMEOUT
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.process.returncode}:\n{self.output()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.http_url}/health", timeout=1.0).status_code == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"server did not answer /health in {START_TIMEOUT}s:\n{self.output()}")

    def logs(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    def output(self) -> str:
        return self.logs() + self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = 20.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        for stream in (self._stdout, self._stderr):
            if stream is not None:
                stream.close()

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()


@contextlib.contextmanager
def running_server(env: Mapping[str, str] | None = None) -> Iterator[ServerProcess]:
    server = ServerProcess(env)
    try:
        yield server.start()
    finally:
        server.close()
