"""Every acknowledged append survives kill -9: a child process appends as fast as it can and
reports each acknowledgement; it is killed mid-stream and the file is read back."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import anyio
import pytest

from app.documents.store import DocumentKey, SqliteStore
from tests.unit.documents.store.appender import PROJECT, update

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[4]
ROUNDS = 4
# Acknowledgements to see before the kill, per round.
ACKNOWLEDGED = 1000


async def acknowledged_then_killed(path: Path, first: int) -> list[tuple[str, int, int]]:
    """Run the appender until it has acknowledged ACKNOWLEDGED updates, SIGKILL it, and
    return every acknowledgement it wrote, those still in the pipe included."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.unit.documents.store.appender",
        str(path),
        str(first),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    lines: list[bytes] = []
    try:
        with anyio.fail_after(60):
            while len(lines) < ACKNOWLEDGED:
                line = await process.stdout.readline()
                if not line.endswith(b"\n"):
                    error = (await process.stderr.read()).decode(errors="replace")
                    pytest.fail(f"the appender stopped after {len(lines)} lines:\n{error}")
                lines.append(line)
    finally:
        # Exactly one signal: signalling a child that has died makes Popen reap it, and
        # asyncio's watcher would then never see how it ended.
        process.send_signal(signal.SIGKILL)
        lines += (await process.stdout.read()).splitlines(keepends=True)
        await process.wait()
    assert process.returncode == -signal.SIGKILL
    # write(2) of a short line is all or nothing, so a line never ends half-written.
    assert all(line.endswith(b"\n") for line in lines)
    return [
        (document_id.decode(), int(seq), int(number))
        for document_id, seq, number in (line.split() for line in lines)
    ]


async def test_every_acknowledged_append_survives_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "documents.sqlite3"
    acknowledged: dict[tuple[str, int], int] = {}
    for round_ in range(ROUNDS):
        acks = await acknowledged_then_killed(path, first=round_ * 10_000_000)
        assert len(acks) >= ACKNOWLEDGED
        for document_id, seq, number in acks:
            assert acknowledged.setdefault((document_id, seq), number) == number, "seq reused"

        store = SqliteStore(path)
        await store.start()
        try:
            stored: dict[tuple[str, int], bytes] = {}
            for info in await store.documents(PROJECT):
                document = await store.load(DocumentKey(PROJECT, info.document_id))
                assert document is not None
                assert document.snapshot is None
                assert len(document.updates) == document.last_seq == info.last_seq
                for seq, data in enumerate(document.updates, start=1):
                    stored[info.document_id, seq] = data
        finally:
            await store.stop()

        missing = [
            (document_id, seq, number)
            for (document_id, seq), number in acknowledged.items()
            if stored.get((document_id, seq)) != update(number)
        ]
        assert missing == [], f"round {round_}: {len(missing)} acknowledged updates lost"
        # What was committed but killed before its acknowledgement was written may be there
        # too; each of those is a whole update, never a torn one.
        numbers = [int(data.split()[1]) for data in stored.values()]
        assert all(stored[k] == update(n) for k, n in zip(stored, numbers, strict=True))
        assert len(set(numbers)) == len(numbers)
        assert len(stored) >= len(acknowledged)
