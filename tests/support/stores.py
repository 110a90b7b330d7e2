"""Reading a document straight from a server's store, as a test checks what survived."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from pycrdt import Doc, Text

from tests.support.yjs import DOCUMENT_ID, TEXT_NAME


def sqlite_text(database: Path, project: str, document_id: str = DOCUMENT_ID) -> str:
    """The document as an SQLite store holds it: its snapshot, then its log, in one read."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        row = db.execute(
            "SELECT id, snapshot FROM documents WHERE project_id = ? AND document_id = ?",
            (project, document_id),
        ).fetchone()
        assert row is not None, f"nothing stored for {project}/{document_id}"
        updates = db.execute(
            "SELECT data FROM updates WHERE document = ? ORDER BY seq", (row[0],)
        ).fetchall()
    doc: Doc[Text] = Doc()
    for (update,) in ([(row[1],)] if row[1] is not None else []) + updates:
        doc.apply_update(update)
    return str(doc.get(TEXT_NAME, type=Text))
