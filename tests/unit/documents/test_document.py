"""LiveDocument: validation by applying, the out-of-order repair, rebuilding, compaction."""

from __future__ import annotations

import itertools

import pytest
from pycrdt import Doc, Text, TransactionEvent

from app.documents.document import MAX_UNSETTLED_BYTES, LiveDocument
from app.documents.store.base import DocumentKey, StoredDocument
from app.errors import Refusal

KEY = DocumentKey("p1", "main.tex")


def edits() -> tuple[str, list[bytes]]:
    """One client's four updates, each depending on the one before but the last: "aa", "hh"
    inside it, "c" inside that, "ff" at the start (docs/documents.md)."""
    doc: Doc[Text] = Doc()
    text = doc.get("content", type=Text)
    updates: list[bytes] = []

    def keep(event: TransactionEvent) -> None:
        updates.append(event.update)

    doc.observe(keep)
    text.insert(0, "aa")
    text.insert(1, "hh")
    text.insert(2, "c")
    text.insert(0, "ff")
    return str(text), updates


def empty() -> LiveDocument:
    return LiveDocument(KEY, "content", None)


def test_an_update_is_applied_and_kept_for_the_store() -> None:
    final, updates = edits()
    document = empty()
    for update in updates:
        document.apply(update)

    assert document.text() == final
    assert document.size == sum(map(len, updates))


@pytest.mark.parametrize(
    "data",
    [b"\x01\x02\x03", b"\xff", b"\x80\xc6\x86\x8f\x01", b"\x05"],
    ids=["truncated", "bad-varint", "huge-count", "count-beyond-length"],
)
def test_bytes_that_are_not_an_update_are_refused_and_change_nothing(data: bytes) -> None:
    document = empty()
    document.apply(edits()[1][0])
    before = (document.text(), document.state_vector(), document.size)

    with pytest.raises(Refusal) as refused:
        document.apply(data)

    assert refused.value.code == "invalid_update"
    assert (document.text(), document.state_vector(), document.size) == before


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_updates_out_of_their_senders_order_lose_nothing(order: tuple[int, ...]) -> None:
    # Plain yrs loses the "c" in 4 of these 24 orders (u1, u3, u4, u2 among them).
    final, updates = edits()
    document = empty()
    for index in order:
        document.apply(updates[index])

    assert document.text() == final
    reloaded: Doc[Text] = Doc()
    reloaded.apply_update(document.encode())
    assert str(reloaded.get("content", type=Text)) == final


def test_a_held_back_update_is_in_the_snapshot_and_in_a_diff() -> None:
    final, updates = edits()
    document = empty()
    document.apply(updates[0])
    document.apply(updates[2])  # depends on updates[1]: held back

    snapshot, _, _ = document.snapshot()
    diff = document.diff(b"\x00")
    for data in (snapshot, diff):
        doc: Doc[Text] = Doc()
        doc.apply_update(data)
        doc.apply_update(updates[1])
        doc.apply_update(updates[3])
        assert str(doc.get("content", type=Text)) == final


def test_an_update_that_fails_part_way_leaves_the_document_as_it_was(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    final, updates = edits()
    document = empty()
    for update in updates:
        document.apply(update)
    other: Doc[Text] = Doc()
    other.get("content", type=Text).insert(0, "zz")
    bad = other.get_update()
    doc = document._doc
    real_apply = type(doc).apply_update

    def apply_then_fail(self: Doc[Text], update: bytes) -> None:
        # What yrs does on ~1 in 1,500 fuzzed updates: part applied, then a RuntimeError.
        real_apply(self, update)
        if update == bad:
            raise RuntimeError("block parent must be deleted or shared ref type")

    monkeypatch.setattr(type(doc), "apply_update", apply_then_fail)
    with pytest.raises(Refusal) as refused:
        document.apply(bad)
    monkeypatch.undo()

    assert refused.value.code == "invalid_update"
    assert document.text() == final
    assert document._doc is not doc


def test_a_stored_document_is_rebuilt_from_its_snapshot_and_log() -> None:
    final, updates = edits()
    stored = StoredDocument(snapshot=updates[0], snapshot_seq=1, updates=updates[1:], last_seq=4)
    document = LiveDocument(KEY, "content", stored)

    assert document.text() == final
    assert document.applied_seq == 4
    assert document.stored_seq == 0  # stored by nobody here yet


def test_compaction_keeps_what_was_not_stored_yet() -> None:
    final, updates = edits()
    document = empty()
    for update in updates[:3]:
        document.apply(update)
    document.stored(1, 1)
    document.stored(2, 2)  # two entries in one append
    document.apply(updates[3])  # applied, not stored

    snapshot, through, entries = document.snapshot()
    assert (through, entries) == (2, 3)
    document.compacted(snapshot, through, entries)

    rebuilt = LiveDocument(KEY, "content", StoredDocument(snapshot, 2, [updates[3]], 3))
    assert rebuilt.text() == final
    assert document.size == len(snapshot) + len(updates[3])


def test_text_is_inserted_at_the_start_and_its_update_returned() -> None:
    document = empty()
    update = document.insert_text("\\documentclass{article}")

    doc: Doc[Text] = Doc()
    doc.apply_update(update)
    assert str(doc.get("content", type=Text)) == "\\documentclass{article}"


def test_a_state_vector_that_is_not_one_is_refused() -> None:
    with pytest.raises(Refusal) as refused:
        empty().diff(b"\xff")
    assert refused.value.code == "invalid_state_vector"


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_a_log_stored_out_of_order_loads_whole(order: tuple[int, ...]) -> None:
    final, updates = edits()
    stored = StoredDocument(None, 0, [updates[i] for i in order], 4)

    assert LiveDocument(KEY, "content", stored).text() == final


def test_an_update_held_back_across_a_reload_is_integrated_when_its_dependency_comes() -> None:
    final, updates = edits()
    first = empty()
    for index in (0, 2, 3):
        first.apply(updates[index])
    first.stored(1, 3)
    snapshot, through, entries = first.snapshot()
    first.compacted(snapshot, through, entries)

    reloaded = LiveDocument(KEY, "content", StoredDocument(snapshot, through, [], through))
    reloaded.apply(updates[1])

    assert reloaded.text() == final


def test_a_deletion_that_comes_before_its_insertion_survives_compaction() -> None:
    doc: Doc[Text] = Doc()
    text = doc.get("content", type=Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    text.insert(0, "abc")
    del text[1:2]
    insertion, deletion = updates

    document = empty()
    document.apply(deletion)  # of items the server has not got yet
    snapshot, _, _ = document.snapshot()
    rebuilt = LiveDocument(KEY, "content", StoredDocument(snapshot, 1, [insertion], 2))
    document.apply(insertion)

    assert document.text() == "ac"
    assert rebuilt.text() == "ac"


def test_held_back_updates_are_bounded() -> None:
    doc: Doc[Text] = Doc()
    text = doc.get("content", type=Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    text.insert(0, "x")
    for _ in range(3):
        text.insert(len(text), "y" * (MAX_UNSETTLED_BYTES // 2))
    document = empty()
    document.apply(updates[1])  # waits for the first
    with pytest.raises(Refusal) as refused:
        document.apply(updates[2])

    assert refused.value.code == "invalid_update"
    document.apply(updates[0])
    assert document.text() == "x" + "y" * (MAX_UNSETTLED_BYTES // 2)


def test_a_state_vector_claiming_more_than_it_holds_is_refused_at_once() -> None:
    with pytest.raises(Refusal) as refused:
        empty().diff(bytes.fromhex("80c6868f01"))
    assert refused.value.code == "invalid_state_vector"
