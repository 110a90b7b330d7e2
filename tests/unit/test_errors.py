"""Close codes and refusals: one enum that the docs' table matches, one refusal shape."""

from __future__ import annotations

import re
from pathlib import Path

from app.errors import CloseCode, Refusal

SECURITY_DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"


def test_every_close_code_is_documented_and_every_documented_code_exists() -> None:
    text = SECURITY_DOC.read_text(encoding="utf-8")
    table = text[text.index("## Close codes") :]
    table = table[: table.index("\n## ", 1)]
    documented = {int(code) for code in re.findall(r"^\| (\d{4}) \|", table, re.MULTILINE)}

    assert documented == {int(code) for code in CloseCode}


def test_a_refusal_becomes_an_error_payload_without_empty_details() -> None:
    assert Refusal("x", "y").payload() == {"code": "x", "message": "y"}
    assert Refusal("x", "y", details=[]).payload() == {"code": "x", "message": "y"}
    assert Refusal("x", "y", details=[{"loc": "a", "msg": "b"}]).payload() == {
        "code": "x",
        "message": "y",
        "details": [{"loc": "a", "msg": "b"}],
    }


def test_a_refusal_defaults_to_400_and_keeps_its_message() -> None:
    refusal = Refusal("invalid_project_id", "expected a project id")

    assert (refusal.status, str(refusal)) == (400, "expected a project id")
