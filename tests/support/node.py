"""Node.js for the tests that run JavaScript (never skipped: `.ci/run` installs it), with
tests/js/package.json's packages installed once into git-ignored tests/.node/ at those versions."""

from __future__ import annotations

import fcntl
import functools
import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.server import ROOT

PACKAGE = ROOT / "tests" / "js" / "package.json"
NODE_CACHE = ROOT / "tests" / ".node"
INSTALL_TIMEOUT = 600.0
# Global btoa/atob (docs/clients/texflow-yjs.mjs) and fetch (tests/js/provider_driver.mjs).
MIN_NODE_MAJOR = 18


@functools.cache
def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"{name} is not installed: these tests run JavaScript (tests/js/) under Node. "
            "Install Node.js 18+ and npm (Debian: `apt-get install nodejs npm`); "
            ".ci/run does so itself.",
            pytrace=False,
        )
    return found


@functools.cache
def node() -> str:
    """The node binary, once it is known to be recent enough."""
    binary = tool("node")
    version = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < MIN_NODE_MAJOR:
        pytest.fail(f"Node.js {MIN_NODE_MAJOR}+ is required, found {version}", pytrace=False)
    return binary


def installed_modules() -> Path:
    """node_modules for tests/js/package.json, installed once per version of that file."""
    spec = PACKAGE.read_bytes()
    target = NODE_CACHE / hashlib.sha256(spec).hexdigest()[:16]
    NODE_CACHE.mkdir(exist_ok=True)
    # Two test runs at once (two terminals) must not install into one folder together.
    with (NODE_CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / ".installed").exists():
            # Installs for older versions of package.json are not used again.
            for folder in NODE_CACHE.iterdir():
                if folder.is_dir():
                    shutil.rmtree(folder, ignore_errors=True)
            target.mkdir()
            (target / "package.json").write_bytes(spec)
            # Without optional dependencies: y-websocket 2 lists its server's (y-leveldb, with
            # a native LevelDB build, and an old ws), which no test runs.
            command = [tool("npm"), "install", "--no-audit", "--no-fund", "--loglevel=error"]
            try:
                done = subprocess.run(
                    [*command, "--omit=optional"],
                    cwd=target,
                    capture_output=True,
                    text=True,
                    timeout=INSTALL_TIMEOUT,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                pytest.fail(f"npm install took more than {INSTALL_TIMEOUT:.0f}s", pytrace=False)
            if done.returncode != 0:
                pytest.fail(
                    f"npm install failed ({done.returncode}):\n{done.stdout}\n{done.stderr}",
                    pytrace=False,
                )
            (target / ".installed").touch()
    return target / "node_modules"


def bundle(folder: Path, *scripts: Path) -> Path:
    """`scripts` copied into `folder` beside node_modules, as a web app would bundle them: Node
    resolves `import 'yjs'` from the importing file's real folder upwards, so a symlinked
    script would look beside its original instead. Returns `folder`."""
    modules = installed_modules()
    for script in scripts:
        shutil.copy(script, folder / script.name)
    (folder / "node_modules").symlink_to(modules, target_is_directory=True)
    return folder
