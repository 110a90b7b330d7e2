"""Start-up: the command line refuses bad configuration and mints development tokens."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from jose import jwt

from tests.support.server import ROOT


def run_app(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=tmp_path,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"ENVIRONMENT": "production"}, "JWT_SECRET"),
        ({"ENVIRONMENT": "production", "JWT_SECRET": "short-secret"}, "JWT_SECRET"),
        ({"WS_PING_INTERVAL": "fast"}, "WS_PING_INTERVAL"),
        ({"JWT_LEEWAY": "10"}, "JWT_LEEWAY"),
        ({"MAX_MESSAGE_SIZE": "big"}, "MAX_MESSAGE_SIZE"),
        ({"ENVIRONMENT": "staging"}, "ENVIRONMENT"),
        ({"JWT_PUBLIC_KEY_PATH": "/nonexistent/key.pem"}, "JWT_PUBLIC_KEY_PATH"),
    ],
)
def test_bad_configuration_stops_start_up_naming_the_variable(
    tmp_path: Path, env: dict[str, str], named: str
) -> None:
    result = run_app(tmp_path, env)
    assert result.returncode == 2
    assert named in result.stderr
    assert "Traceback" not in result.stderr


def test_token_command_mints_a_token_for_the_development_secret(tmp_path: Path) -> None:
    result = run_app(tmp_path, {}, "token", "--user", "bob", "--project", "demo,book")
    assert result.returncode == 0, result.stderr
    secret = (tmp_path / ".dev-secret").read_text().strip()
    claims = jwt.decode(result.stdout.strip(), secret, algorithms=["HS256"])
    assert (claims["user_id"], claims["projects"]) == ("bob", ["demo", "book"])
    assert claims["exp"] > claims["iat"]
    again = run_app(tmp_path, {}, "token", "--user", "bob")
    jwt.decode(again.stdout.strip(), secret, algorithms=["HS256"])


def test_token_command_refuses_production(tmp_path: Path) -> None:
    result = run_app(
        tmp_path, {"ENVIRONMENT": "production", "JWT_SECRET": "s" * 40}, "token", "--user", "x"
    )
    assert result.returncode == 2
    assert "development" in result.stderr
