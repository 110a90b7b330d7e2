"""Command line: `python -m app` serves; `python -m app token` mints a development token."""

from __future__ import annotations

import argparse
import dataclasses
import os
import secrets
import sys
from pathlib import Path

from app.admission.auth import issue_token
from app.settings import Settings, SettingsError
from app.socket.contract import ContractError

DEV_SECRET_FILE = Path(".dev-secret")


def development_secret(path: Path = DEV_SECRET_FILE) -> str:
    """The secret `make run` and `make token` share, created on first use (development only)."""
    try:
        secret = path.read_text(encoding="utf-8").strip()
        if secret:
            return secret
    except FileNotFoundError:
        pass
    secret = secrets.token_urlsafe(48)
    path.write_text(secret + "\n", encoding="utf-8")
    path.chmod(0o600)
    return secret


def load_settings() -> Settings:
    settings = Settings.from_env(os.environ)
    if not settings.is_production and not settings.jwt_secret and not settings.jwt_public_key:
        settings = dataclasses.replace(settings, jwt_secret=development_secret())
    return settings


def _serve(settings: Settings) -> None:
    from app.main import create_app
    from app.upgrade.server import serve

    if not settings.is_production and settings.jwt_secret:
        token = issue_token(
            settings.jwt_secret, user_id="alice", username="Alice", projects=["demo"], ttl=86400
        )
        host = "127.0.0.1" if settings.host in {"0.0.0.0", "::"} else settings.host
        # A banner for the developer's terminal, on stderr: the JSON log on stdout stays
        # token-free.
        print(
            "\ntexflow-websocket (development)\n"
            f"  health:  http://{host}:{settings.port}/health\n"
            f"  docs:    http://{host}:{settings.port}/docs\n"
            f"  demo:    http://{host}:{settings.port}/demo (open it in two tabs)\n"
            f"  connect: ws://{host}:{settings.port}/ws/demo?token={token}\n"
            f"  y-websocket: new WebsocketProvider('ws://{host}:{settings.port}/yjs/demo', "
            "'main.tex', doc, {protocols: ['bearer', token]})\n"
            "  more tokens: make token USER=bob PROJECT=demo\n",
            file=sys.stderr,
            flush=True,
        )
    serve(create_app(settings), settings)


def _token(settings: Settings, args: argparse.Namespace) -> None:
    if settings.is_production:
        raise SettingsError("ENVIRONMENT: tokens are minted here only in development")
    if not settings.jwt_secret:
        raise SettingsError("JWT_SECRET: minting needs an HS256 secret")
    projects = [p for p in (args.project or "").split(",") if p] or None
    print(
        issue_token(
            settings.jwt_secret,
            user_id=args.user,
            username=args.name or args.user,
            projects=projects,
            ttl=args.ttl,
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the service (the default)")
    token = commands.add_parser("token", help="print a development token")
    token.add_argument("--user", required=True, help="user id (the user_id and sub claims)")
    token.add_argument("--name", help="display name (defaults to the user id)")
    token.add_argument("--project", help="comma-separated projects the token may join")
    token.add_argument("--ttl", type=int, default=86400, help="lifetime in seconds")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        if args.command == "token":
            _token(settings, args)
        else:
            _serve(settings)
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except ContractError as exc:
        print(f"refusing to start: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
