"""A real PostgreSQL server of the suite's own: a fresh cluster in a temporary directory on a free
port, which tests may stop, kill -9, freeze and restart on the same data.

It needs PostgreSQL's server programs (`initdb` and `postgres`: Debian's `postgresql` package,
which puts them in /usr/lib/postgresql/VERSION/bin); tests that need them fail, never skip,
without them. PostgreSQL refuses to run as root: as root, both run as the `postgres` user (which
that package creates) or else `nobody`, and the temporary directory is handed to that user.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import asyncpg
import pytest

from tests.support.server import free_port

T = TypeVar("T")

START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
SUPERUSER = "postgres"
MISSING = (
    "no PostgreSQL server programs (initdb and postgres) on PATH or in"
    " /usr/lib/postgresql/*/bin: install PostgreSQL (on Debian: apt-get install postgresql)"
)


def _version_key(directory: str) -> tuple[int, ...]:
    name = Path(directory).parent.name
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def postgres_bin_dir() -> Path | None:
    """The folder holding `initdb` and `postgres`: on PATH, else the newest of Debian's."""
    found = shutil.which("initdb")
    if found and shutil.which("postgres"):
        # Debian links them into a folder on PATH; the real folder holds both, side by side.
        real = Path(found).resolve().parent
        if (real / "postgres").is_file():
            return real
    for directory in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True):
        if all(os.access(Path(directory) / name, os.X_OK) for name in ("initdb", "postgres")):
            return Path(directory)
    return None


def _unprivileged_user() -> pwd.struct_passwd | None:
    """Who runs the server: None (ourselves) unless we are root, whom PostgreSQL refuses."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root, and there is neither a postgres nor a nobody user")


def _run_in_thread(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion on a loop of its own, from sync code that may itself be
    called while a test's loop exists."""

    async def run() -> T:
        return await make()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result()


class PostgresServer:
    """One cluster: `start`, then `dsn(database)`; `kill`, `freeze`/`thaw`, `stop` and `start`
    again on the same data directory and port."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = free_port()
        self._user = _unprivileged_user()
        self._dir = tempfile.TemporaryDirectory(prefix="texflow-postgres-")
        root = Path(self._dir.name)
        self.data_dir = root / "data"
        self.socket_dir = root / "socket"
        self.log_path = root / "postgres.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._databases = 0
        # The processes of the last kill, which must be gone before the next start.
        self._killed: list[int] = []
        self.socket_dir.mkdir()
        if self._user is not None:
            for path in (root, self.socket_dir):
                os.chown(path, self._user.pw_uid, self._user.pw_gid)
        self._initdb()

    def _popen_options(self) -> dict[str, object]:
        options: dict[str, object] = {"env": {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C"}}
        if self._user is not None:
            options |= {
                "user": self._user.pw_uid,
                "group": self._user.pw_gid,
                "extra_groups": [],
                "cwd": self._dir.name,
            }
        return options

    def _initdb(self) -> None:
        result = subprocess.run(
            [
                str(self.bin_dir / "initdb"),
                "--pgdata", str(self.data_dir),
                "--username", SUPERUSER,
                "--auth", "trust",
                "--encoding", "UTF8",
                "--no-locale",
                "--no-instructions",
            ],
            capture_output=True,
            check=False,
            **self._popen_options(),  # type: ignore[call-overload]
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(
                f"initdb failed ({result.returncode}):\n"
                + (result.stdout + result.stderr).decode(errors="replace")
            )

    def dsn(self, database: str = "postgres", **settings: str) -> str:
        query = "&".join(f"{name}={value}" for name, value in settings.items())
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}" + (
            f"?{query}" if query else ""
        )

    def start(self) -> PostgresServer:
        """Start the server (again) on its data directory; returns once it accepts queries."""
        assert self.process is None or self.process.poll() is not None, "already running"
        self._wait_for_old_processes()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(self.bin_dir / "postgres"),
                    "-D", str(self.data_dir),
                    "-p", str(self.port),
                    # The durability the store promises is this default's: every commit waits
                    # for its WAL on the disk.
                    "-c", "fsync=on",
                    "-c", "synchronous_commit=on",
                    "-c", "listen_addresses=127.0.0.1",
                    "-c", f"unix_socket_directories={self.socket_dir}",
                    "-c", "logging_collector=off",
                    "-c", "max_connections=200",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                # Out of the test run's process group: a Ctrl-C there is not the server's.
                start_new_session=True,
                **self._popen_options(),  # type: ignore[call-overload]
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited ({self.process.returncode}):\n{self.log()}")
            if self._accepts_queries():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"postgres did not accept queries in {START_TIMEOUT}s:\n{self.log()}")

    def _accepts_queries(self) -> bool:
        async def probe() -> bool:
            try:
                connection = await asyncpg.connect(self.dsn(), timeout=2)
            except (TimeoutError, OSError, asyncpg.PostgresError):
                return False
            try:
                return bool(await connection.fetchval("SELECT true", timeout=2))
            finally:
                connection.terminate()

        return _run_in_thread(probe)

    def log(self) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return text[-4000:]

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        """Shut down cleanly (fast mode: clients are disconnected, nothing is lost)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.thaw()
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the postmaster and every server process with it, as a crash of the server
        would: what they had not written is gone; restarting recovers from the WAL."""
        if self.process is None or self.process.poll() is not None:
            return
        # Stopped first, so that it forks nothing while its children are listed.
        os.kill(self.process.pid, signal.SIGSTOP)
        self._killed = _children(self.process.pid)
        for pid in [self.process.pid, *self._killed]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(STOP_TIMEOUT)

    def freeze(self) -> None:
        """SIGSTOP every server process: connections stay open and nothing is answered."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)
        for pid in _children(self.process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        for pid in _children(self.process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        os.kill(self.process.pid, signal.SIGCONT)

    def restart(self) -> PostgresServer:
        self.stop()
        return self.start()

    def _wait_for_old_processes(self) -> None:
        """After a kill, the killed backends must be gone before a new postmaster starts: it
        refuses to while they still hold the old shared memory."""
        deadline = time.monotonic() + STOP_TIMEOUT
        while any(map(_running, self._killed)) and time.monotonic() < deadline:
            time.sleep(0.02)
        self._killed = []

    def execute(self, sql: str, database: str = "postgres") -> None:
        async def run() -> None:
            connection = await asyncpg.connect(self.dsn(database), timeout=10)
            try:
                await connection.execute(sql, timeout=60)
            finally:
                await connection.close(timeout=10)

        _run_in_thread(run)

    def create_database(self) -> str:
        """A new, empty database; returns its name."""
        self._databases += 1
        name = f"test_{self._databases}"
        self.execute(f"CREATE DATABASE {name}")
        return name

    def close(self) -> None:
        self.kill()
        self._wait_for_old_processes()
        self._dir.cleanup()


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command (state, ppid, ...), None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command may hold spaces and parentheses: the fields follow its last ")".
    return text.rsplit(")", 1)[1].split()


def _children(parent: int) -> list[int]:
    """The server's processes: each a child of the postmaster, and each in a process group of
    its own (PostgreSQL's children call setsid), so no one signal to a group reaches them all."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and int(fields[1]) == parent:
                children.append(int(entry.name))
    return children


def _running(pid: int) -> bool:
    """Whether a process still runs (a zombie holds nothing, and may never be reaped)."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.fail(MISSING)
    server = PostgresServer(bin_dir)
    try:
        yield server.start()
    finally:
        server.close()
