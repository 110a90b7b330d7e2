"""Uploads: parts reassembled in order, bounded, restartable."""

from __future__ import annotations

import pytest

from app.documents.uploads import Uploads
from app.errors import Refusal


def test_parts_in_order_make_the_whole_update() -> None:
    uploads = Uploads(100)
    assert uploads.add("d", 0, b"ab", False) is None
    assert uploads.add("d", 1, b"cd", False) is None
    assert uploads.add("d", 2, b"e", True) == b"abcde"
    # The bound counts what is held now, not what went through.
    assert uploads.add("d", 0, b"x" * 100, True) == b"x" * 100


def test_a_part_out_of_sequence_discards_the_upload_and_its_other_parts() -> None:
    uploads = Uploads(100)
    uploads.add("d", 0, b"ab", False)
    with pytest.raises(Refusal) as refused:
        uploads.add("d", 2, b"cd", False)
    assert refused.value.code == "invalid_part"
    # The rest of that upload is dropped without another refusal.
    assert uploads.add("d", 3, b"ef", False) is None
    assert uploads.add("d", 4, b"gh", True) is None
    assert uploads.add("d", 0, b"z", True) == b"z"


def test_the_parts_after_a_refused_oversized_upload_are_dropped_quietly() -> None:
    uploads = Uploads(4)
    uploads.add("d", 0, b"abc", False)
    with pytest.raises(Refusal) as refused:
        uploads.add("d", 1, b"def", False)
    assert refused.value.code == "document_too_large"
    for index in range(2, 40):
        assert uploads.add("d", index, b"xyz", index == 39) is None
    assert uploads.add("d", 0, b"ok", True) == b"ok"


def test_part_zero_starts_over() -> None:
    uploads = Uploads(10)
    uploads.add("d", 0, b"abcdefgh", False)
    assert uploads.add("d", 0, b"12345678", False) is None
    assert uploads.add("d", 1, b"9", True) == b"123456789"


def test_more_than_the_bound_in_parts_is_refused_across_documents() -> None:
    uploads = Uploads(10)
    uploads.add("a", 0, b"123456", False)
    with pytest.raises(Refusal) as refused:
        uploads.add("b", 0, b"123456", False)
    assert refused.value.code == "document_too_large"
    assert uploads.add("a", 1, b"7890", True) == b"1234567890"
