"""Settings.from_env: defaults, Go-style durations, validation errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

import app
from app.settings import (
    DEFAULT_DEMO_BUNDLE,
    MIN_PRODUCTION_SECRET_BYTES,
    Settings,
    SettingsError,
    parse_duration,
)

PRODUCTION_SECRET = "p" * MIN_PRODUCTION_SECRET_BYTES


@pytest.fixture(scope="module")
def rsa_public_key() -> rsa.RSAPublicKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()


@pytest.fixture
def pem_path(tmp_path: Path, rsa_public_key: rsa.RSAPublicKey) -> Path:
    path = tmp_path / "public.pem"
    path.write_bytes(
        rsa_public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


# Defaults


def test_defaults_match_the_go_service() -> None:
    settings = Settings.from_env({})

    assert settings.environment == "development"
    assert settings.port == 8082
    assert settings.ws_ping_interval == 54.0
    assert settings.ws_pong_wait == 60.0
    assert settings.ws_write_wait == 10.0
    assert settings.jwt_leeway == 10.0
    assert settings.max_message_size == 524_288
    assert settings.max_connections_per_ip == 100
    assert settings.ws_compression is False
    assert settings.redis_addr is None
    assert settings.redis_prefix == "texflow:ws:"
    assert settings.presence_ttl == 30.0
    assert settings.shutdown_drain == 10.0
    assert settings.instance_id is None
    assert settings.jwt_secret is None
    assert settings.jwt_public_key is None
    assert settings.log_level == "info"
    assert settings.memory_reclaim_interval == 60.0


def test_request_bodies_are_limited_by_default() -> None:
    settings = Settings.from_env({})

    assert settings.max_body_bytes == 1024 * 1024
    assert settings.body_timeout == 10.0


def test_the_demo_bundle_is_where_the_build_script_writes_it_unless_set() -> None:
    # config/build_demo.py writes there by default (it imports the same constant).
    expected = Path(app.__file__).resolve().parent / "static" / "build" / "editor.js"
    assert Settings.from_env({}).demo_bundle == DEFAULT_DEMO_BUNDLE == expected
    assert Settings.from_env({"DEMO_BUNDLE": " "}).demo_bundle == DEFAULT_DEMO_BUNDLE
    assert Settings.from_env({"DEMO_BUNDLE": "/srv/x.js"}).demo_bundle == Path("/srv/x.js")


@pytest.mark.parametrize(
    ("environment", "host"), [("development", "127.0.0.1"), ("production", "0.0.0.0")]
)
def test_host_default_depends_on_the_environment(environment: str, host: str) -> None:
    settings = Settings.from_env({"ENVIRONMENT": environment, "JWT_SECRET": PRODUCTION_SECRET})

    assert settings.host == host


def test_explicit_host_is_kept() -> None:
    assert Settings.from_env({"HOST": " 10.0.0.5 "}).host == "10.0.0.5"


def test_values_are_read_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "WEBSOCKET_SERVICE_PORT": "9000",
            "WS_PING_INTERVAL": "20s",
            "WS_PONG_WAIT": "1m",
            "WS_WRITE_WAIT": "2500ms",
            "JWT_LEEWAY": "0",
            "MAX_MESSAGE_SIZE": "2048",
            "MAX_CONNECTIONS_PER_IP": "7",
            "WS_COMPRESSION": "yes",
            "REDIS_ADDR": " redis:6379 ",
            "REDIS_CHANNEL_PREFIX": "other:",
            "PRESENCE_TTL": "45s",
            "SHUTDOWN_DRAIN": "1m",
            "INSTANCE_ID": " ws-1 ",
            "LOG_LEVEL": "DEBUG",
            "MAX_BODY_BYTES": "65536",
            "BODY_TIMEOUT": "30s",
            "MEMORY_RECLAIM_INTERVAL": "5m",
        }
    )

    assert settings.port == 9000
    assert settings.ws_ping_interval == 20.0
    assert settings.ws_pong_wait == 60.0
    assert settings.ws_write_wait == 2.5
    assert settings.jwt_leeway == 0.0
    assert settings.max_message_size == 2048
    assert settings.max_connections_per_ip == 7
    assert settings.ws_compression is True
    assert settings.redis_addr == "redis:6379"
    assert settings.redis_prefix == "other:"
    assert settings.presence_ttl == 45.0
    assert settings.shutdown_drain == 60.0
    assert settings.instance_id == "ws-1"
    assert settings.log_level == "debug"
    assert settings.max_body_bytes == 65536
    assert settings.body_timeout == 30.0
    assert settings.memory_reclaim_interval == 300.0


def test_a_zero_reclaim_interval_turns_reclaims_off() -> None:
    assert Settings.from_env({"MEMORY_RECLAIM_INTERVAL": "0"}).memory_reclaim_interval == 0.0


# Durations


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("54s", 54.0),
        ("1m30s", 90.0),
        ("500ms", 0.5),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("0", 0.0),
        ("1h2m3s", 3723.0),
        ("250us", 0.000_25),
        (" 10s ", 10.0),
    ],
)
def test_go_style_durations_parse_to_seconds(raw: str, seconds: float) -> None:
    assert parse_duration("WS_PING_INTERVAL", raw) == pytest.approx(seconds)


@pytest.mark.parametrize("raw", ["abc", "10", "5x", "-1s", "", "1 s", "s"])
def test_bad_durations_name_the_variable(raw: str) -> None:
    with pytest.raises(SettingsError, match=r"^WS_PING_INTERVAL: "):
        parse_duration("WS_PING_INTERVAL", raw)


@pytest.mark.parametrize("raw", ["abc", "10", "5x", "-1s", "  "])
@pytest.mark.parametrize(
    "name", ["WS_PING_INTERVAL", "WS_PONG_WAIT", "WS_WRITE_WAIT", "JWT_LEEWAY", "BODY_TIMEOUT"]
)
def test_bad_duration_in_the_environment_names_the_variable(name: str, raw: str) -> None:
    with pytest.raises(SettingsError, match=rf"^{name}: "):
        Settings.from_env({name: raw})


def test_empty_duration_variable_means_the_default() -> None:
    # An empty variable is treated as unset, as for every other variable.
    assert Settings.from_env({"WS_PING_INTERVAL": ""}).ws_ping_interval == 54.0


@pytest.mark.parametrize(
    "name",
    [
        "WS_PING_INTERVAL",
        "WS_PONG_WAIT",
        "WS_WRITE_WAIT",
        "PRESENCE_TTL",
        "SHUTDOWN_DRAIN",
        "BODY_TIMEOUT",
    ],
)
def test_zero_timing_durations_are_refused(name: str) -> None:
    with pytest.raises(SettingsError, match=rf"^{name}: expected a duration greater than zero"):
        Settings.from_env({name: "0s"})


# Integers and choices


@pytest.mark.parametrize(
    "name",
    [
        "WEBSOCKET_SERVICE_PORT",
        "MAX_MESSAGE_SIZE",
        "MAX_CONNECTIONS_PER_IP",
        "WS_SEND_QUEUE_LIMIT",
        "WS_SEND_QUEUE_BYTES",
        "MAX_BODY_BYTES",
    ],
)
@pytest.mark.parametrize("raw", ["abc", "1.5", "10k"])
def test_bad_integers_name_the_variable(name: str, raw: str) -> None:
    with pytest.raises(SettingsError, match=rf"^{name}: expected a whole number"):
        Settings.from_env({name: raw})


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("MAX_CONNECTIONS_PER_IP", "0"),
        ("MAX_MESSAGE_SIZE", "1023"),
        ("MAX_BODY_BYTES", "1023"),
        ("WEBSOCKET_SERVICE_PORT", "-1"),
        ("WEBSOCKET_SERVICE_PORT", "65536"),
    ],
)
def test_integers_out_of_range_name_the_variable(name: str, raw: str) -> None:
    with pytest.raises(SettingsError, match=rf"^{name}: "):
        Settings.from_env({name: raw})


@pytest.mark.parametrize(
    ("name", "raw"),
    [("ENVIRONMENT", "staging"), ("LOG_LEVEL", "verbose"), ("WS_COMPRESSION", "maybe")],
)
def test_bad_choices_name_the_variable(name: str, raw: str) -> None:
    with pytest.raises(SettingsError, match=rf"^{name}: "):
        Settings.from_env({name: raw})


def test_send_queue_bytes_below_max_message_size_is_refused() -> None:
    with pytest.raises(SettingsError, match=r"^WS_SEND_QUEUE_BYTES: "):
        Settings.from_env({"MAX_MESSAGE_SIZE": "4096", "WS_SEND_QUEUE_BYTES": "4095"})


def test_send_queue_bytes_equal_to_max_message_size_is_accepted() -> None:
    settings = Settings.from_env({"MAX_MESSAGE_SIZE": "4096", "WS_SEND_QUEUE_BYTES": "4096"})

    assert settings.send_queue_bytes == 4096


# Production keys


def test_production_refuses_to_start_without_a_key() -> None:
    with pytest.raises(SettingsError, match="JWT_SECRET or JWT_PUBLIC_KEY_PATH"):
        Settings.from_env({"ENVIRONMENT": "production"})


def test_production_refuses_a_short_secret() -> None:
    short = "s" * (MIN_PRODUCTION_SECRET_BYTES - 1)

    with pytest.raises(SettingsError, match=r"^JWT_SECRET: "):
        Settings.from_env({"ENVIRONMENT": "production", "JWT_SECRET": short})


def test_production_counts_secret_length_in_bytes() -> None:
    # 16 characters of two bytes each: 32 bytes.
    settings = Settings.from_env({"ENVIRONMENT": "production", "JWT_SECRET": "é" * 16})

    assert settings.jwt_secret == "é" * 16


def test_production_accepts_a_32_byte_secret() -> None:
    settings = Settings.from_env({"ENVIRONMENT": "Production", "JWT_SECRET": PRODUCTION_SECRET})

    assert settings.is_production
    assert settings.jwt_secret == PRODUCTION_SECRET


def test_development_accepts_a_short_secret_and_no_key() -> None:
    assert Settings.from_env({"JWT_SECRET": "short"}).jwt_secret == "short"
    assert Settings.from_env({}).jwt_secret is None


def test_production_accepts_a_public_key_alone(pem_path: Path) -> None:
    settings = Settings.from_env(
        {"ENVIRONMENT": "production", "JWT_PUBLIC_KEY_PATH": str(pem_path)}
    )

    assert settings.jwt_public_key_path == pem_path
    assert settings.jwt_public_key == pem_path.read_text()


def test_missing_public_key_file_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"^JWT_PUBLIC_KEY_PATH: cannot read"):
        Settings.from_env({"JWT_PUBLIC_KEY_PATH": str(tmp_path / "absent.pem")})


def test_non_pem_public_key_file_names_the_variable(tmp_path: Path) -> None:
    path = tmp_path / "key.txt"
    path.write_text("this is not a key\n")

    with pytest.raises(SettingsError, match=r"^JWT_PUBLIC_KEY_PATH: expected a PEM public key"):
        Settings.from_env({"JWT_PUBLIC_KEY_PATH": str(path)})


def test_binary_public_key_file_names_the_variable(
    tmp_path: Path, rsa_public_key: rsa.RSAPublicKey
) -> None:
    path = tmp_path / "public.der"
    path.write_bytes(
        rsa_public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )

    with pytest.raises(SettingsError, match=r"^JWT_PUBLIC_KEY_PATH: "):
        Settings.from_env({"JWT_PUBLIC_KEY_PATH": str(path)})


# Origins


def test_allowed_origins_are_split_trimmed_and_normalized() -> None:
    settings = Settings.from_env(
        {"ALLOWED_ORIGINS": " https://App.Example.com/ ,http://localhost:3000,, "}
    )

    assert settings.allowed_origins == ("https://app.example.com", "http://localhost:3000")
    assert settings.effective_origins == ("https://app.example.com", "http://localhost:3000")


@pytest.mark.parametrize("raw", [None, "", "   "])
def test_unset_origins_default_to_any_in_development(raw: str | None) -> None:
    env = {} if raw is None else {"ALLOWED_ORIGINS": raw}
    settings = Settings.from_env(env)

    assert settings.allowed_origins is None
    assert settings.effective_origins == ("*",)


def test_unset_origins_default_to_same_origin_in_production() -> None:
    settings = Settings.from_env({"ENVIRONMENT": "production", "JWT_SECRET": PRODUCTION_SECRET})

    assert settings.effective_origins == ()


def test_explicit_origins_apply_in_production() -> None:
    settings = Settings.from_env(
        {
            "ENVIRONMENT": "production",
            "JWT_SECRET": PRODUCTION_SECRET,
            "ALLOWED_ORIGINS": "*",
        }
    )

    assert settings.effective_origins == ("*",)


# Secrets


def test_secrets_do_not_appear_in_repr(pem_path: Path) -> None:
    settings = Settings.from_env(
        {
            "JWT_SECRET": "jwt-secret-value-" + "z" * 20,
            "REDIS_PASSWORD": "redis-password-value",
            "JWT_PUBLIC_KEY_PATH": str(pem_path),
        }
    )
    text = repr(settings)

    assert "jwt-secret-value" not in text
    assert "redis-password-value" not in text
    assert "BEGIN PUBLIC KEY" not in text
    assert "port=8082" in text


def test_redis_url_credentials_do_not_appear_in_repr() -> None:
    settings = Settings.from_env({"REDIS_ADDR": "redis://:redis-url-password@redis:6379/0"})

    assert "redis-url-password" not in repr(settings)


def test_root_path_and_room_grace_are_read_and_default_to_off() -> None:
    assert (Settings().root_path, Settings().room_grace) == ("", 0.0)
    settings = Settings.from_env({"ROOT_PATH": " /realtime ", "ROOM_GRACE": "30s"})

    assert (settings.root_path, settings.room_grace) == ("/realtime", 30.0)


@pytest.mark.parametrize("raw", ["realtime", "/realtime/", "/"])
def test_a_root_path_must_be_a_path_without_a_trailing_slash(raw: str) -> None:
    with pytest.raises(SettingsError, match=r"^ROOT_PATH: expected a path such as /realtime"):
        Settings.from_env({"ROOT_PATH": raw})


def test_wire_version_is_1_unless_a_rollout_from_older_releases_asks_for_0() -> None:
    assert Settings.from_env({}).wire_version == 1
    assert Settings.from_env({"WIRE_VERSION": "0"}).wire_version == 0
    with pytest.raises(SettingsError, match=r"^WIRE_VERSION: expected one of 0, 1"):
        Settings.from_env({"WIRE_VERSION": "2"})


# The document store


@pytest.mark.parametrize(
    "store",
    [
        "memory",
        "sqlite:///data/documents.sqlite3",
        "postgresql://texflow:pg-secret@db.internal:5432/texflow",
        "postgres://texflow@db.internal/texflow?sslmode=require",
        "postgresql:///texflow?host=/var/run/postgresql",
    ],
)
def test_document_stores_are_sqlite_postgresql_or_memory(store: str) -> None:
    assert Settings.from_env({"DOCUMENT_STORE": store}).document_store == store


@pytest.mark.parametrize(
    ("store", "message"),
    [
        ("mysql://texflow:pg-secret@db/texflow", r"expected sqlite:///PATH, postgresql://"),
        ("postgresql://texflow:pg-secret@db:port/texflow", r"invalid port"),
    ],
)
def test_a_bad_document_store_is_refused_without_repeating_it(store: str, message: str) -> None:
    with pytest.raises(SettingsError, match=rf"^DOCUMENT_STORE: .*{message}") as refused:
        Settings.from_env({"DOCUMENT_STORE": store})

    assert "pg-secret" not in str(refused.value)


def test_a_postgresql_password_does_not_appear_in_repr() -> None:
    settings = Settings.from_env({"DOCUMENT_STORE": "postgresql://texflow:pg-secret@db/texflow"})

    assert "pg-secret" not in repr(settings)
