"""OriginPolicy: any origin, an explicit list, or same-origin against the Host header."""

from __future__ import annotations

import pytest

from app.admission.origins import OriginPolicy

ANY = OriginPolicy(("*",))
LISTED = OriginPolicy(("https://App.Example.com/", "http://localhost:3000"))
SAME_ORIGIN = OriginPolicy(())


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "", "http://localhost:3000"])
def test_wildcard_allows_any_origin(origin: str) -> None:
    assert ANY.allows(origin, "gateway.example.com")


def test_wildcard_in_a_list_allows_any_origin() -> None:
    assert OriginPolicy(("https://a.example", "*")).allows("https://b.example", None)


@pytest.mark.parametrize(
    "origin",
    [
        "https://app.example.com",
        "HTTPS://APP.EXAMPLE.COM",
        "https://app.example.com/",
        " https://app.example.com ",
        "http://localhost:3000",
    ],
)
def test_listed_origins_match_case_insensitively_ignoring_a_trailing_slash(origin: str) -> None:
    assert LISTED.allows(origin, "gateway.example.com")


@pytest.mark.parametrize(
    "origin",
    [
        "http://app.example.com",
        "https://app.example.com:8443",
        "https://app.example.com.evil.example",
        "https://evil.example",
        "http://localhost:3001",
        "null",
        "",
    ],
)
def test_unlisted_origins_are_refused(origin: str) -> None:
    assert not LISTED.allows(origin, "app.example.com")


def test_a_list_ignores_the_host_header() -> None:
    assert not LISTED.allows("https://gateway.example.com", "gateway.example.com")


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        ("https://gateway.example.com", "gateway.example.com"),
        ("http://localhost:8082", "localhost:8082"),
        ("https://Gateway.Example.com/", "GATEWAY.example.com"),
    ],
)
def test_same_origin_allows_an_origin_whose_host_is_the_host_header(origin: str, host: str) -> None:
    assert SAME_ORIGIN.allows(origin, host)


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        ("https://evil.example", "gateway.example.com"),
        ("http://localhost:3000", "localhost:8082"),
        ("https://gateway.example.com.evil.example", "gateway.example.com"),
        ("https://user@gateway.example.com", "gateway.example.com"),
        ("null", "gateway.example.com"),
        ("https://gateway.example.com", None),
        ("https://gateway.example.com", ""),
        ("", ""),
    ],
)
def test_same_origin_refuses_other_hosts(origin: str, host: str | None) -> None:
    assert not SAME_ORIGIN.allows(origin, host)


@pytest.mark.parametrize("policy", [ANY, LISTED, SAME_ORIGIN])
def test_requests_without_an_origin_header_are_allowed(policy: OriginPolicy) -> None:
    assert policy.allows(None, None)
    assert policy.allows(None, "gateway.example.com")


def test_cors_origins() -> None:
    assert ANY.cors_origins == ["*"]
    assert LISTED.cors_origins == ["http://localhost:3000", "https://app.example.com"]
    assert SAME_ORIGIN.cors_origins == []
