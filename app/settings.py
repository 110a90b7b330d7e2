"""Service settings, read once from the environment and validated before anything starts.

Only `create_app`, the container and the command line read these; services get plain values.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

Environment = Literal["development", "production"]
LogLevel = Literal["debug", "info", "warning", "error"]

MIN_PRODUCTION_SECRET_BYTES = 32

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


class SettingsError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


def parse_duration(name: str, raw: str) -> float:
    """Parse a Go-style duration (`54s`, `1m30s`, `500ms`) into seconds."""
    text = raw.strip()
    if text == "0":
        return 0.0
    position = 0
    seconds = 0.0
    while position < len(text):
        match = _DURATION_PART.match(text, position)
        if match is None:
            raise SettingsError(
                f"{name}: expected a duration such as 54s, 1m30s or 500ms, got {raw!r}"
            )
        seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if not text:
        raise SettingsError(f"{name}: expected a duration such as 54s, 1m30s or 500ms, got ''")
    return seconds


def _positive_duration(env: Mapping[str, str], name: str, default: str) -> float:
    value = parse_duration(name, env.get(name) or default)
    if value <= 0:
        raise SettingsError(f"{name}: expected a duration greater than zero, got {env.get(name)!r}")
    return value


def _integer(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise SettingsError(f"{name}: expected a whole number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name}: expected a number of at least {minimum}, got {value}")
    return value


def _boolean(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if raw == "":
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name}: expected true or false, got {env.get(name)!r}")


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = (env.get(name) or default).strip().lower()
    if raw not in choices:
        raise SettingsError(f"{name}: expected one of {', '.join(choices)}, got {env.get(name)!r}")
    return raw


def _networks(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in (env.get(name) or "").split(",") if p.strip())
    for part in parts:
        try:
            ipaddress.ip_network(part, strict=False)
        except ValueError:
            raise SettingsError(
                f"{name}: expected IP addresses or CIDR networks, got {part!r}"
            ) from None
    return parts


def _origins(raw: str | None) -> tuple[str, ...] | None:
    parts = tuple(p.strip().rstrip("/").lower() for p in (raw or "").split(",") if p.strip())
    return parts or None


DEFAULT_DOCUMENT_STORE = "sqlite:///data/documents.sqlite3"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def _check_document_store(store: str) -> None:
    """sqlite:///PATH, memory, or a PostgreSQL URL; a message never repeats the URL, which
    may hold a password."""
    if store == "memory" or store.startswith("sqlite:///"):
        return
    if not store.startswith(POSTGRES_SCHEMES):
        raise SettingsError(
            "DOCUMENT_STORE: expected sqlite:///PATH, postgresql://USER@HOST/DATABASE or "
            f"memory, got {store.split('://')[0]!r}"
        )
    try:
        urlsplit(store).port  # noqa: B018 - it raises on a port that is not a number
    except ValueError:
        raise SettingsError("DOCUMENT_STORE: the PostgreSQL URL has an invalid port") from None


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the service can be configured with; defaults match the Go service."""

    environment: Environment = "development"
    host: str = "127.0.0.1"
    port: int = 8082
    # May be a redis:// URL with a password in it.
    redis_addr: str | None = field(default=None, repr=False)
    redis_password: str | None = field(default=None, repr=False)
    redis_prefix: str = "texflow:ws:"
    presence_ttl: float = 30.0
    instance_id: str | None = None
    shutdown_drain: float = 10.0
    jwt_secret: str | None = field(default=None, repr=False)
    jwt_public_key_path: Path | None = None
    jwt_public_key: str | None = field(default=None, repr=False)
    jwt_leeway: float = 10.0
    ws_ping_interval: float = 54.0
    ws_pong_wait: float = 60.0
    ws_write_wait: float = 10.0
    ws_compression: bool = False
    send_queue_limit: int = 256
    send_queue_bytes: int = 4 * 1024 * 1024
    max_message_size: int = 524_288
    max_connections_per_ip: int = 100
    max_connections_per_user: int = 20
    # Peers whose X-Forwarded-For is believed (addresses or CIDR networks).
    trusted_proxies: tuple[str, ...] = ()
    rate_limit_per_second: float = 100.0
    rate_limit_burst: int = 200
    abuse_max_strikes: int = 20
    abuse_window: float = 10.0
    token_expiry_warning: float = 60.0
    stats_required_role: str | None = None
    handshake_timeout: float = 10.0
    max_header_bytes: int = 16384
    # Counted while a body arrives, chunked included, so nothing ever buffers more than this.
    max_body_bytes: int = 1024 * 1024
    # The whole body's deadline from the end of the head: at the defaults a client must send
    # MAX_BODY_BYTES at about 100 KB/s, which any backend service on the network does.
    body_timeout: float = 10.0
    # None means the environment's default: any origin in development, same-origin in production.
    allowed_origins: tuple[str, ...] | None = None
    log_level: LogLevel = "info"
    # Serves /demo in production too; its token endpoint stays development-only regardless.
    demo_enabled: bool = False
    # The path prefix a proxy serves the service under, stripping it from requests (ASGI
    # root_path): routes, WebSocket upgrades included, answer below it.
    root_path: str = ""
    # How long a room stays open once its last member left: a reconnect within it finds it open.
    room_grace: float = 0.0
    # The format this instance writes for the others: 1, or 0 while releases from before the
    # versioned format still run beside it (every instance reads both).
    wire_version: int = 1
    # The least time between two memory reclaims after a drop in connections; 0 turns them off.
    memory_reclaim_interval: float = 60.0
    # Where documents are kept: sqlite:///PATH (relative to the working directory, or
    # sqlite:////absolute/path), a postgresql:// URL, which may hold a password, or memory
    # (nothing survives a restart).
    document_store: str = field(default=DEFAULT_DOCUMENT_STORE, repr=False)
    # The Y.Text the TexFlow editor binds, read and seeded by the backend API.
    document_text_name: str = "content"
    # Yjs bytes a document may hold (its snapshot and the updates since); Overleaf caps one
    # document at 2 MB of text.
    max_document_bytes: int = 16 * 1024 * 1024
    # How long a document stays in memory once nobody uses it.
    document_grace: float = 30.0
    max_resident_documents: int = 1000
    # Updates applied but not yet stored, across documents: past it, writes are refused.
    document_pending_bytes: int = 64 * 1024 * 1024
    # A document's log is compacted into a snapshot after this many appends.
    document_compact_every: int = 500
    # How often resident documents are brought up to the store (what other instances stored
    # and this one missed live); 0 turns it off.
    document_catch_up_interval: float = 1.0
    # How often /yjs connections get a keep-alive frame: the stock y-websocket provider closes a
    # connection on which nothing arrived for 30 s, and server pings are invisible to it.
    yjs_keepalive: float = 10.0
    # How long a /yjs upgrade refused for its token is held open after its auth message: the
    # stock provider reconnects 100 ms after any connection that opened, so this is its pace.
    yjs_refusal_hold: float = 30.0
    # How long a revocation keeps refusing the tokens issued before it: longer than tokens live.
    revocation_memory: float = 86_400.0

    @property
    def yjs_frame_bytes(self) -> int:
        """The frame limit on /yjs/: a whole document in one sync step 2, plus its framing."""
        return max(self.max_message_size, self.max_document_bytes + 64)

    @property
    def is_production(self) -> bool:
        return self.environment == "production"

    @property
    def effective_origins(self) -> tuple[str, ...]:
        """Allowed origins after defaults: `()` means same-origin only, `("*",)` means any."""
        if self.allowed_origins is not None:
            return self.allowed_origins
        return () if self.is_production else ("*",)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build settings from environment variables, raising SettingsError on a bad value."""
        environment = _choice(env, "ENVIRONMENT", "development", ("development", "production"))
        production = environment == "production"
        key_path_raw = (env.get("JWT_PUBLIC_KEY_PATH") or "").strip()
        key_path = Path(key_path_raw) if key_path_raw else None
        public_key = None
        if key_path is not None:
            try:
                public_key = key_path.read_text(encoding="utf-8")
            except OSError as exc:
                raise SettingsError(
                    f"JWT_PUBLIC_KEY_PATH: cannot read {key_path_raw!r}: {exc.strerror}"
                ) from None
            except UnicodeDecodeError:
                raise SettingsError(
                    f"JWT_PUBLIC_KEY_PATH: expected a PEM public key in {key_path_raw!r}, "
                    "got binary data (DER?)"
                ) from None
            if "-----BEGIN" not in public_key:
                raise SettingsError(
                    f"JWT_PUBLIC_KEY_PATH: expected a PEM public key in {key_path_raw!r}"
                )
        settings = cls(
            environment="production" if production else "development",
            host=(env.get("HOST") or "").strip() or ("0.0.0.0" if production else "127.0.0.1"),
            port=_integer(env, "WEBSOCKET_SERVICE_PORT", 8082, 0),
            redis_addr=(env.get("REDIS_ADDR") or "").strip() or None,
            redis_password=env.get("REDIS_PASSWORD") or None,
            redis_prefix=env.get("REDIS_CHANNEL_PREFIX") or "texflow:ws:",
            presence_ttl=_positive_duration(env, "PRESENCE_TTL", "30s"),
            instance_id=(env.get("INSTANCE_ID") or "").strip() or None,
            shutdown_drain=_positive_duration(env, "SHUTDOWN_DRAIN", "10s"),
            jwt_secret=env.get("JWT_SECRET") or None,
            jwt_public_key_path=key_path,
            jwt_public_key=public_key,
            jwt_leeway=parse_duration("JWT_LEEWAY", env.get("JWT_LEEWAY") or "10s"),
            ws_ping_interval=_positive_duration(env, "WS_PING_INTERVAL", "54s"),
            ws_pong_wait=_positive_duration(env, "WS_PONG_WAIT", "60s"),
            ws_write_wait=_positive_duration(env, "WS_WRITE_WAIT", "10s"),
            ws_compression=_boolean(env, "WS_COMPRESSION", False),
            send_queue_limit=_integer(env, "WS_SEND_QUEUE_LIMIT", 256, 1),
            send_queue_bytes=_integer(env, "WS_SEND_QUEUE_BYTES", 4 * 1024 * 1024, 1024),
            max_message_size=_integer(env, "MAX_MESSAGE_SIZE", 524_288, 1024),
            max_connections_per_ip=_integer(env, "MAX_CONNECTIONS_PER_IP", 100, 1),
            max_connections_per_user=_integer(env, "MAX_CONNECTIONS_PER_USER", 20, 1),
            trusted_proxies=_networks(env, "TRUSTED_PROXIES"),
            rate_limit_per_second=float(_integer(env, "RATE_LIMIT_PER_SECOND", 100, 1)),
            rate_limit_burst=_integer(env, "RATE_LIMIT_BURST", 200, 1),
            abuse_max_strikes=_integer(env, "ABUSE_MAX_STRIKES", 20, 1),
            abuse_window=_positive_duration(env, "ABUSE_WINDOW", "10s"),
            token_expiry_warning=_positive_duration(env, "TOKEN_EXPIRY_WARNING", "60s"),
            stats_required_role=(env.get("STATS_REQUIRED_ROLE") or "").strip() or None,
            handshake_timeout=_positive_duration(env, "HANDSHAKE_TIMEOUT", "10s"),
            max_header_bytes=_integer(env, "MAX_HEADER_BYTES", 16384, 1024),
            max_body_bytes=_integer(env, "MAX_BODY_BYTES", 1024 * 1024, 1024),
            body_timeout=_positive_duration(env, "BODY_TIMEOUT", "10s"),
            allowed_origins=_origins(env.get("ALLOWED_ORIGINS")),
            log_level=_choice(  # type: ignore[arg-type]
                env, "LOG_LEVEL", "info", ("debug", "info", "warning", "error")
            ),
            demo_enabled=_boolean(env, "DEMO_ENABLED", False),
            root_path=(env.get("ROOT_PATH") or "").strip(),
            room_grace=parse_duration("ROOM_GRACE", env.get("ROOM_GRACE") or "0s"),
            wire_version=int(_choice(env, "WIRE_VERSION", "1", ("0", "1"))),
            memory_reclaim_interval=parse_duration(
                "MEMORY_RECLAIM_INTERVAL", env.get("MEMORY_RECLAIM_INTERVAL") or "60s"
            ),
            document_store=(env.get("DOCUMENT_STORE") or "").strip() or DEFAULT_DOCUMENT_STORE,
            document_text_name=(env.get("DOCUMENT_TEXT_NAME") or "").strip() or "content",
            max_document_bytes=_integer(
                env, "MAX_DOCUMENT_BYTES", 16 * 1024 * 1024, 8 * 1024 * 1024
            ),
            document_grace=parse_duration("DOCUMENT_GRACE", env.get("DOCUMENT_GRACE") or "30s"),
            max_resident_documents=_integer(env, "MAX_RESIDENT_DOCUMENTS", 1000, 1),
            document_pending_bytes=_integer(
                env, "DOCUMENT_PENDING_BYTES", 64 * 1024 * 1024, 1024 * 1024
            ),
            document_compact_every=_integer(env, "DOCUMENT_COMPACT_EVERY", 500, 1),
            document_catch_up_interval=parse_duration(
                "DOCUMENT_CATCH_UP_INTERVAL", env.get("DOCUMENT_CATCH_UP_INTERVAL") or "1s"
            ),
            yjs_keepalive=_positive_duration(env, "YJS_KEEPALIVE", "10s"),
            yjs_refusal_hold=_positive_duration(env, "YJS_REFUSAL_HOLD", "30s"),
            revocation_memory=_positive_duration(env, "REVOCATION_MEMORY", "24h"),
        )
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse configurations that must never run; SettingsError names the variable."""
        if self.port > 65535:
            raise SettingsError(f"WEBSOCKET_SERVICE_PORT: expected at most 65535, got {self.port}")
        if self.root_path and (not self.root_path.startswith("/") or self.root_path.endswith("/")):
            raise SettingsError(
                f"ROOT_PATH: expected a path such as /realtime (a leading slash, no trailing "
                f"one), got {self.root_path!r}"
            )
        _check_document_store(self.document_store)
        if self.send_queue_bytes < self.max_message_size:
            raise SettingsError(
                "WS_SEND_QUEUE_BYTES: expected at least MAX_MESSAGE_SIZE "
                f"({self.max_message_size}), got {self.send_queue_bytes}"
            )
        if self.is_production:
            if self.jwt_secret is None and self.jwt_public_key is None:
                raise SettingsError(
                    "JWT_SECRET or JWT_PUBLIC_KEY_PATH: production needs a key to verify tokens"
                )
            if (
                self.jwt_secret is not None
                and len(self.jwt_secret.encode()) < MIN_PRODUCTION_SECRET_BYTES
            ):
                raise SettingsError(
                    f"JWT_SECRET: production needs at least {MIN_PRODUCTION_SECRET_BYTES} bytes, "
                    f"got {len(self.jwt_secret.encode())}"
                )
