"""config/build_demo.py when it cannot build: `make run` gets one line and the classic page, a test
gets a failure with the reason.

Node.js is hidden from the script through PATH, so this runs the same with or without it; the
successful build is exercised by tests/e2e/test_demo_yjs_browser.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.server import ROOT

SCRIPT = ROOT / "config" / "build_demo.py"


def run_without_node(tmp_path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    empty = tmp_path / "empty-path"
    empty.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, str(SCRIPT), *options],
        cwd=ROOT,
        env={"PATH": str(empty)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_make_run_without_node_gets_one_line_and_no_stale_bundle(tmp_path: Path) -> None:
    # A bundle an earlier build left: served as if this build had worked, were it kept.
    stale = tmp_path / "editor.js"
    stale.write_text("/* an earlier build */", encoding="utf-8")
    done = run_without_node(tmp_path, "--fallback", "--out", str(stale))
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "node and npm not found" in lines[0]
    assert "/demo serves the classic page" in lines[0]
    assert not stale.exists()


def test_a_build_that_must_work_fails_with_the_reason(tmp_path: Path) -> None:
    out = tmp_path / "editor.js"
    done = run_without_node(tmp_path, "--out", str(out))
    assert done.returncode == 1
    assert "node and npm not found" in done.stderr
    assert not out.exists()
