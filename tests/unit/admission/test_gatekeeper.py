"""Gatekeeper.admit: check order, rejection codes, the per-IP cap, tickets and metrics."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from app.admission.auth import AuthService, issue_token
from app.admission.gatekeeper import Gatekeeper, Ticket, credentials
from app.admission.limits import ConnectionLimiter
from app.admission.origins import OriginPolicy
from app.admission.proxies import ClientAddressResolver
from app.admission.revocations import Revocations
from app.broadcaster import MemoryBroadcaster
from app.errors import Refusal
from app.metrics import Metrics
from app.rooms.registry import RoomRegistry

SECRET = "gatekeeper-secret-" + "g" * 32
HOST = "gateway.example.com"
GOOD_ORIGIN = "https://gateway.example.com"
EVIL_ORIGIN = "https://evil.example"
IP = "10.0.0.1"
CAP = 2
CODES = (
    "shutting_down",
    "invalid_project_id",
    "origin_not_allowed",
    "unauthorized",
    "forbidden",
    "too_many_connections",
)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def limiter() -> ConnectionLimiter:
    return ConnectionLimiter(limit=CAP)


@pytest.fixture
def registry(metrics: Metrics) -> RoomRegistry:
    registry = RoomRegistry(MemoryBroadcaster(), metrics)
    registry.accepting = True  # what start() sets; the gatekeeper reads nothing else
    return registry


@pytest.fixture
def gatekeeper(metrics: Metrics, limiter: ConnectionLimiter, registry: RoomRegistry) -> Gatekeeper:
    auth = AuthService(hs256_secret=SECRET, rs256_public_key=None, leeway=10)
    users = ConnectionLimiter(limit=1000)
    return Gatekeeper(
        auth,
        OriginPolicy(()),
        limiter,
        users,
        ClientAddressResolver(()),
        metrics,
        registry,
        Revocations(3600),
    )


def token(user_id: str = "alice", projects: list[str] | None = None) -> str:
    return issue_token(SECRET, user_id=user_id, projects=projects)


def headers(origin: str | None = GOOD_ORIGIN, authorization: str | None = None) -> dict[str, str]:
    result = {"host": HOST}
    if origin is not None:
        result["origin"] = origin
    if authorization is not None:
        result["authorization"] = authorization
    return result


def admit(
    gatekeeper: Gatekeeper,
    *,
    project_id: str = "p1",
    header_map: Mapping[str, str] | None = None,
    query: Mapping[str, str] | None = None,
    ip: str = IP,
) -> Ticket:
    return gatekeeper.admit(
        project_id=project_id,
        headers=headers() if header_map is None else header_map,
        query={"token": token()} if query is None else query,
        peer=ip,
    )


def rejection(
    gatekeeper: Gatekeeper,
    *,
    project_id: str = "p1",
    header_map: Mapping[str, str] | None = None,
    query: Mapping[str, str] | None = None,
    ip: str = IP,
) -> Refusal:
    with pytest.raises(Refusal) as info:
        admit(gatekeeper, project_id=project_id, header_map=header_map, query=query, ip=ip)
    return info.value


def rejected(metrics: Metrics, code: str) -> float:
    value = metrics.registry.get_sample_value(
        "websocket_rejected_upgrades_total", {"code": code, "protocol": "json"}
    )
    return value or 0.0


# Admission


def test_valid_upgrade_is_admitted(gatekeeper: Gatekeeper, limiter: ConnectionLimiter) -> None:
    ticket = admit(gatekeeper, query={"token": token("alice", ["p1"])})

    assert ticket.project_id == "p1"
    assert ticket.identity.user_id == "alice"
    assert ticket.ip == IP
    assert limiter.open_connections(IP) == 1


@pytest.mark.parametrize("project_id", ["p", "A-z_0.9", "a" * 128, "project.v2", "my-project_1"])
def test_valid_project_ids_are_admitted(gatekeeper: Gatekeeper, project_id: str) -> None:
    assert admit(gatekeeper, project_id=project_id).project_id == project_id


@pytest.mark.parametrize(
    "project_id",
    ["", "a" * 129, "a/b", "a b", "café", "p1\n", "a;b", "a%20b", "\uff50\uff11", "a\\b"],
    ids=[
        "empty",
        "129-chars",
        "slash",
        "space",
        "non-ascii",
        "newline",
        "semicolon",
        "percent",
        "fullwidth",
        "backslash",
    ],
)
def test_invalid_project_id_is_refused_with_400(gatekeeper: Gatekeeper, project_id: str) -> None:
    error = rejection(gatekeeper, project_id=project_id)

    assert (error.status, error.code) == (400, "invalid_project_id")
    assert error.message


def test_disallowed_origin_is_refused_with_403(gatekeeper: Gatekeeper) -> None:
    error = rejection(gatekeeper, header_map=headers(origin=EVIL_ORIGIN))

    assert (error.status, error.code) == (403, "origin_not_allowed")


def test_request_without_origin_is_not_refused_for_origin(gatekeeper: Gatekeeper) -> None:
    assert admit(gatekeeper, header_map=headers(origin=None)).identity.user_id == "alice"


@pytest.mark.parametrize("query", [{}, {"token": ""}, {"token": "garbage"}])
def test_missing_or_bad_token_is_refused_with_401(
    gatekeeper: Gatekeeper, query: dict[str, str]
) -> None:
    error = rejection(gatekeeper, query=query)

    assert (error.status, error.code) == (401, "unauthorized")


def test_token_signed_with_another_secret_is_refused_with_401(gatekeeper: Gatekeeper) -> None:
    forged = issue_token("another-secret-" + "z" * 32, user_id="alice")

    assert rejection(gatekeeper, query={"token": forged}).status == 401


def test_token_for_another_project_is_refused_with_403(gatekeeper: Gatekeeper) -> None:
    error = rejection(gatekeeper, query={"token": token("alice", ["p2"])})

    assert (error.status, error.code) == (403, "forbidden")


def test_instance_not_accepting_refuses_with_503_before_any_other_check(
    gatekeeper: Gatekeeper, registry: RoomRegistry, limiter: ConnectionLimiter
) -> None:
    registry.accepting = False

    for error in (
        rejection(gatekeeper),
        rejection(gatekeeper, project_id="a/b", header_map=headers(origin=EVIL_ORIGIN), query={}),
    ):
        assert (error.status, error.code) == (503, "shutting_down")
    assert limiter.open_connections(IP) == 0


# Order


def test_project_id_is_checked_before_origin_and_token(gatekeeper: Gatekeeper) -> None:
    error = rejection(
        gatekeeper, project_id="a/b", header_map=headers(origin=EVIL_ORIGIN), query={}
    )

    assert error.code == "invalid_project_id"


def test_origin_is_checked_before_the_token(gatekeeper: Gatekeeper) -> None:
    error = rejection(gatekeeper, header_map=headers(origin=EVIL_ORIGIN), query={})

    assert error.code == "origin_not_allowed"


def test_token_is_checked_before_the_cap(
    gatekeeper: Gatekeeper, limiter: ConnectionLimiter
) -> None:
    for _ in range(CAP):
        admit(gatekeeper)

    assert rejection(gatekeeper, query={}).code == "unauthorized"
    assert rejection(gatekeeper, query={"token": token("alice", ["p2"])}).code == "forbidden"
    assert limiter.open_connections(IP) == CAP


def test_refused_upgrades_take_no_slot(gatekeeper: Gatekeeper, limiter: ConnectionLimiter) -> None:
    rejection(gatekeeper, project_id="")
    rejection(gatekeeper, header_map=headers(origin=EVIL_ORIGIN))
    rejection(gatekeeper, query={})
    rejection(gatekeeper, query={"token": token("alice", ["p2"])})

    assert limiter.open_connections(IP) == 0


# Per-IP cap and tickets


def test_upgrades_past_the_per_ip_cap_are_refused_with_429(gatekeeper: Gatekeeper) -> None:
    for _ in range(CAP):
        admit(gatekeeper)

    error = rejection(gatekeeper)

    assert (error.status, error.code) == (429, "too_many_connections")


def test_cap_is_per_address(gatekeeper: Gatekeeper) -> None:
    for _ in range(CAP):
        admit(gatekeeper, ip="10.0.0.1")

    assert admit(gatekeeper, ip="10.0.0.2").ip == "10.0.0.2"


def test_ticket_release_frees_a_slot(gatekeeper: Gatekeeper) -> None:
    tickets = [admit(gatekeeper) for _ in range(CAP)]
    rejection(gatekeeper)

    tickets[0].release()

    assert admit(gatekeeper).ip == IP
    assert rejection(gatekeeper).code == "too_many_connections"


def test_ticket_release_is_idempotent(gatekeeper: Gatekeeper, limiter: ConnectionLimiter) -> None:
    first = admit(gatekeeper)
    admit(gatekeeper)

    first.release()
    first.release()
    first.release()

    assert limiter.open_connections(IP) == 1


# Where the token comes from


def test_bearer_header_is_preferred_over_the_query(gatekeeper: Gatekeeper) -> None:
    ticket = admit(
        gatekeeper,
        header_map=headers(authorization=f"Bearer {token('bob')}"),
        query={"token": token("alice")},
    )

    assert ticket.identity.user_id == "bob"


def test_bad_bearer_header_is_not_rescued_by_a_good_query_token(
    gatekeeper: Gatekeeper,
) -> None:
    error = rejection(
        gatekeeper,
        header_map=headers(authorization="Bearer garbage"),
        query={"token": token("alice")},
    )

    assert error.status == 401


@pytest.mark.parametrize(
    ("authorization", "expected"),
    [
        ("Bearer header-token", "header-token"),
        ("bearer header-token", "header-token"),
        ("BEARER   header-token  ", "header-token"),
        ("Basic dXNlcjpwYXNz", "query-token"),
        ("Bearer", "query-token"),
        ("Bearer    ", "query-token"),
        ("", "query-token"),
    ],
)
def test_bearer_token_extraction(authorization: str, expected: str) -> None:
    found = credentials({"authorization": authorization}, {"token": "query-token"}, []).token

    assert found == expected


def test_bearer_token_is_none_without_any_token() -> None:
    assert credentials({}, {}, []).token is None
    assert credentials({}, {"token": ""}, []).token is None


# Metrics


def test_rejections_are_counted_by_code(
    gatekeeper: Gatekeeper, metrics: Metrics, registry: RoomRegistry
) -> None:
    rejection(gatekeeper, project_id="a/b")
    rejection(gatekeeper, project_id="")
    rejection(gatekeeper, header_map=headers(origin=EVIL_ORIGIN))
    rejection(gatekeeper, query={})
    rejection(gatekeeper, query={"token": token("alice", ["p2"])})
    for _ in range(CAP):
        admit(gatekeeper)
    rejection(gatekeeper)
    registry.accepting = False
    rejection(gatekeeper)

    assert rejected(metrics, "shutting_down") == 1
    assert rejected(metrics, "invalid_project_id") == 2
    assert rejected(metrics, "origin_not_allowed") == 1
    assert rejected(metrics, "unauthorized") == 1
    assert rejected(metrics, "forbidden") == 1
    assert rejected(metrics, "too_many_connections") == 1


def test_admitted_upgrades_are_not_counted_as_rejections(
    gatekeeper: Gatekeeper, metrics: Metrics
) -> None:
    admit(gatekeeper)

    for code in CODES:
        assert rejected(metrics, code) == 0


# Subprotocol token, per-user cap, forwarded addresses


def test_bearer_subprotocol_comes_first_and_is_selected(gatekeeper: Gatekeeper) -> None:
    ticket = gatekeeper.admit(
        project_id="p1",
        headers=headers(authorization="Bearer not-a-valid-token"),
        query={"token": "not-valid-either"},
        peer=IP,
        subprotocols=["bearer", token("sub-user")],
    )
    assert (ticket.identity.user_id, ticket.subprotocol) == ("sub-user", "bearer")


def test_bearer_subprotocol_without_a_token_is_401(gatekeeper: Gatekeeper) -> None:
    with pytest.raises(Refusal) as info:
        gatekeeper.admit(
            project_id="p1", headers=headers(), query={}, peer=IP, subprotocols=["bearer"]
        )
    assert (info.value.status, info.value.code) == (401, "unauthorized")


def test_credentials_without_subprotocol_select_none() -> None:
    found = credentials({"authorization": "Bearer h"}, {"token": "q"}, ["chat"])
    assert (found.token, found.subprotocol) == ("h", None)


def test_per_user_cap_refuses_with_429_and_frees_the_ip_slot(
    metrics: Metrics, registry: RoomRegistry
) -> None:
    auth = AuthService(hs256_secret=SECRET, rs256_public_key=None, leeway=10)
    ips, users = ConnectionLimiter(limit=100), ConnectionLimiter(limit=2)
    keeper = Gatekeeper(
        auth,
        OriginPolicy(()),
        ips,
        users,
        ClientAddressResolver(()),
        metrics,
        registry,
        Revocations(3600),
    )
    first = admit(keeper)
    admit(keeper)
    with pytest.raises(Refusal) as info:
        admit(keeper)
    assert (info.value.status, info.value.code) == (429, "too_many_connections")
    assert "user" in info.value.message
    assert ips.open_connections(IP) == 2
    first.release()
    assert admit(keeper).identity.user_id == "alice"
    assert admit(keeper, query={"token": token("bob")}).identity.user_id == "bob"


def test_forwarded_address_counts_only_behind_a_trusted_proxy(
    metrics: Metrics, registry: RoomRegistry
) -> None:
    auth = AuthService(hs256_secret=SECRET, rs256_public_key=None, leeway=10)
    keeper = Gatekeeper(
        auth,
        OriginPolicy(()),
        ConnectionLimiter(limit=1),
        ConnectionLimiter(limit=100),
        ClientAddressResolver(["10.0.0.0/8"]),
        metrics,
        registry,
        Revocations(3600),
    )
    forwarded = {**headers(), "x-forwarded-for": "198.51.100.7"}
    assert (
        keeper.admit(
            project_id="p1", headers=forwarded, query={"token": token()}, peer="10.1.2.3"
        ).ip
        == "198.51.100.7"
    )
    # Another client behind the same proxy has its own slot...
    other = {**headers(), "x-forwarded-for": "198.51.100.8"}
    assert (
        keeper.admit(project_id="p1", headers=other, query={"token": token()}, peer="10.1.2.3").ip
        == "198.51.100.8"
    )
    # ...but an untrusted peer's header is ignored: the peer itself is counted.
    spoofed = {**headers(), "x-forwarded-for": "203.0.113.99"}
    assert (
        keeper.admit(
            project_id="p1", headers=spoofed, query={"token": token()}, peer="192.0.2.1"
        ).ip
        == "192.0.2.1"
    )
