"""Build the collaborative /demo editor: app/static/yjs/editor.mjs and its pinned npm packages,
bundled by esbuild into one script the page loads from its own origin (no CDN, no inline code).

    python config/build_demo.py [--out PATH] [--fallback]

`make run` runs it with --fallback before serving: without Node.js and npm, or when a step fails,
it prints one line, removes a stale bundle so /demo serves the classic page, and exits 0. Without
--fallback (the browser test) a failure exits 1 with npm's or esbuild's output. The packages are
installed with `npm ci` from the committed lockfile into app/static/yjs/node_modules, once per
version of the lockfile; the bundle and node_modules are git-ignored.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from app.settings import DEFAULT_DEMO_BUNDLE

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "app" / "static" / "yjs"
ENTRY = SOURCE / "editor.mjs"
MODULES = SOURCE / "node_modules"
# Which lockfile node_modules was installed from: a changed pin reinstalls, nothing else does.
STAMP = MODULES / ".texflow-lock-sha256"
ESBUILD = MODULES / ".bin" / "esbuild"
# esbuild 0.28 needs Node.js 18.
MIN_NODE = 18
# A first install downloads about 10 MB; a registry that does not answer must not hang `make run`.
INSTALL_TIMEOUT = 300.0
BUNDLE_TIMEOUT = 60.0
OUTPUT_TAIL = 4000


class BuildError(Exception):
    """A step failed; the message says which, and the tool's own output follows it."""

    def __init__(self, summary: str, output: str = "") -> None:
        super().__init__(summary)
        self.summary = summary
        self.output = output[-OUTPUT_TAIL:]


def _run(argv: list[str], timeout: float, step: str) -> None:
    try:
        done = subprocess.run(  # noqa: S603 - node, npm and esbuild with fixed arguments
            argv, cwd=SOURCE, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise BuildError(f"{step} took more than {timeout:.0f}s") from None
    except OSError as exc:
        raise BuildError(f"{step} could not start: {exc.strerror}") from None
    if done.returncode != 0:
        raise BuildError(f"{step} failed (exit {done.returncode})", done.stdout + done.stderr)


def tools() -> tuple[str, str]:
    """node and npm, or BuildError naming what is missing."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        missing = " and ".join(name for name, path in (("node", node), ("npm", npm)) if not path)
        raise BuildError(f"{missing} not found")
    try:
        version = subprocess.run(  # noqa: S603 - node, one fixed flag
            [node, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
        major = int(version.lstrip("v").split(".")[0])
    except (OSError, subprocess.SubprocessError, ValueError):
        raise BuildError("`node --version` failed") from None
    if major < MIN_NODE:
        raise BuildError(f"Node.js {MIN_NODE}+ is needed, found {version}")
    return node, npm


def _lock_digest() -> str:
    spec = (SOURCE / "package.json").read_bytes() + (SOURCE / "package-lock.json").read_bytes()
    return hashlib.sha256(spec).hexdigest()


def install(npm: str) -> None:
    """node_modules exactly as the lockfile says, unless it already is."""
    digest = _lock_digest()
    if STAMP.is_file() and STAMP.read_text(encoding="ascii") == digest and ESBUILD.exists():
        return
    # --ignore-scripts: esbuild's postinstall only swaps its launcher for the binary (found
    # without it) and would download one when the platform package is missing; nothing else
    # has scripts. --prefer-offline: whatever npm's cache holds is used without asking.
    _run(
        [
            npm,
            "ci",
            "--ignore-scripts",
            "--prefer-offline",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            "--fetch-retries=1",
        ],
        INSTALL_TIMEOUT,
        "npm ci",
    )
    STAMP.write_text(digest, encoding="ascii")


def bundle(out: Path) -> Path:
    """esbuild editor.mjs and everything it imports into `out`, replaced whole: a server
    reading it meanwhile gets the old bundle or the new one, never half of one."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        _run(
            [
                str(ESBUILD),
                str(ENTRY),
                "--bundle",
                "--format=iife",
                "--target=es2020",
                "--minify",
                "--charset=utf8",
                "--log-level=warning",
                f"--outfile={partial}",
            ],
            BUNDLE_TIMEOUT,
            "esbuild",
        )
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    return out


def build(out: Path = DEFAULT_DEMO_BUNDLE) -> Path:
    """Install (if the lockfile changed) and bundle; the bundle's path, or BuildError."""
    _, npm = tools()
    # Two builds at once (make run and a test run) must not install into one folder together;
    # the lock lives beside the default bundle since `npm ci` deletes node_modules first.
    lock_path = DEFAULT_DEMO_BUNDLE.parent / ".install.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        install(npm)
        return bundle(out)


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=DEFAULT_DEMO_BUNDLE, help="the bundle")
    parser.add_argument(
        "--fallback",
        action="store_true",
        help="on failure print one line, remove the bundle and exit 0 (make run)",
    )
    options = parser.parse_args(argv)
    out: Path = options.out
    try:
        build(out)
    except BuildError as error:
        if not options.fallback:
            print(f"build_demo: {error.summary}\n{error.output}".rstrip(), file=sys.stderr)
            return 1
        # A bundle from an earlier build would otherwise still be served as if this one worked.
        out.unlink(missing_ok=True)
        why = f"; `{sys.executable} {_relative(Path(__file__))}` shows why" if error.output else ""
        print(
            f"demo: {error.summary}: /demo serves the classic page (whole text, last edit wins)"
            f"{why}",
            file=sys.stderr,
        )
        return 0
    print(f"demo: /demo is the collaborative Yjs editor ({_relative(out)})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
