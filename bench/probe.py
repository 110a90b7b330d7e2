"""`python -m bench.probe DIR`: the service, with a probe inside it for `bench.flood --inspect`.

It runs what `python -m app` runs, after installing a SIGUSR1 handler. On the signal it reads
the command in DIR/command (one word per line, in order), runs each, and writes what it saw to
DIR/report-<n>.json, n counting from 1:

    report      VmRSS, glibc's mallinfo2, pymalloc's arenas, gc counts and live objects by type
    collect     gc.collect() (what a full collection finds unreachable)
    trim        glibc's malloc_trim(0)
    typecache   sys._clear_type_cache(): CPython's attribute lookup cache keeps a reference to
                the name of each of its 4,096 entries, copies made on the fly included
    snapshot    a tracemalloc snapshot, kept as the baseline of later `traced` commands
    traced      tracemalloc growth since the `snapshot`, by file and line
    cycles      a full collection that keeps what it finds (gc.DEBUG_SAVEALL): the garbage by
                type, and the shortest reference cycle through one object of each watched type
    arenas      pymalloc's arenas read from memory (3.11, 64-bit layout): used pools and live
                blocks per arena, and what the blocks are in the arenas that the first
                `arenas` (the baseline) did not see

tracemalloc starts at import when FLOOD_TRACEMALLOC is set (it doubles the memory of every
allocation, so figures from such a run are only compared with each other). Nothing here is part
of the service: it is how bench.flood looks inside it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import ctypes.util
import gc
import json
import os
import re
import signal
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from types import FrameType
from typing import Any

MALLINFO2_FIELDS = (
    "arena",  # bytes obtained with brk (the main heap)
    "ordblks",  # free chunks
    "smblks",
    "hblks",  # mmapped chunks
    "hblkhd",  # bytes in mmapped chunks
    "usmblks",
    "fsmblks",
    "uordblks",  # bytes in use
    "fordblks",  # bytes free in the heap, still mapped
    "keepcost",  # free bytes at the top of the heap (what trimming the top alone returns)
)


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in MALLINFO2_FIELDS]


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


LIBC = _libc()
_state: dict[str, Any] = {"reports": 0, "baseline": None}


def rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def mallinfo() -> dict[str, int]:
    if LIBC is None or not hasattr(LIBC, "mallinfo2"):
        return {}
    LIBC.mallinfo2.restype = MallInfo2
    info = LIBC.mallinfo2()
    return {name: int(getattr(info, name)) for name in MALLINFO2_FIELDS}


def pymalloc() -> dict[str, Any]:
    """The arena and block totals of sys._debugmallocstats (which prints to C's stderr)."""
    with tempfile.TemporaryFile() as capture:
        saved = os.dup(2)
        try:
            os.dup2(capture.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        text = capture.read().decode("ascii", errors="replace")
    wanted = {
        "# arenas allocated total": "arenas_allocated_total",
        "# arenas reclaimed": "arenas_reclaimed",
        "# arenas highwater mark": "arenas_highwater",
        "# arenas allocated current": "arenas_current",
        "# bytes in allocated blocks": "bytes_in_blocks",
        "# bytes in available blocks": "bytes_available",
        "Total": "total_bytes",
    }
    found: dict[str, Any] = {}
    for line in text.splitlines():
        label, _, value = line.partition("=")
        key = wanted.get(label.strip())
        if key is None:
            continue
        number = re.sub(r"[^0-9]", "", value)
        if number:
            found[key] = int(number)
    classes = re.findall(r"^\s*\d+\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s*$", text, re.MULTILINE)
    found["classes"] = [[int(field) for field in row] for row in classes]  # type: ignore[list-item]
    match = re.search(r"(\d+) unused pools \* \d+ bytes\s*=\s*([\d,]+)", text)
    if match:
        found["unused_pool_bytes"] = int(match.group(2).replace(",", ""))
    return found


WATCHED = re.compile(r"Protocol|Timer|Handle|Future|Task|Connection|Inbox|Flag|Transport|Room")


def objects_by_type(top: int = 25) -> list[tuple[str, int]]:
    counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    watched = [(name, n) for name, n in counts.items() if WATCHED.search(name)]
    return counts.most_common(top) + sorted(watched)


def report() -> dict[str, Any]:
    return {
        "rss_kib": rss_kib(),
        "mallinfo2": mallinfo(),
        "pymalloc": pymalloc(),
        "gc_count": gc.get_count(),
        "gc_objects": len(gc.get_objects()),
        "objects_by_type": objects_by_type(),
    }


def traced(top: int = 30) -> dict[str, Any]:
    baseline = _state["baseline"]
    if baseline is None or not tracemalloc.is_tracing():
        return {"error": "no tracemalloc snapshot"}
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)]
    )
    result: dict[str, Any] = {}
    # Blocks, not bytes: one live block is enough to keep a pymalloc pool, and its arena.
    new = [s for s in snapshot.compare_to(baseline, "traceback") if s.count_diff > 0]
    new.sort(key=lambda s: -s.count_diff)
    result["new_blocks"] = {
        "count": sum(s.count_diff for s in new),
        "top": [
            [s.count_diff, round(s.size_diff / 1024, 1), s.traceback.format()[-6:]]
            for s in new[:top]
        ],
    }
    for key in ("filename", "lineno"):
        stats = snapshot.compare_to(baseline, key)
        result[f"by_{key}"] = {
            "total_kib": round(sum(s.size_diff for s in stats) / 1024, 1),
            "top": [
                [round(s.size_diff / 1024, 1), s.count_diff, str(s.traceback[0])]
                for s in stats[:top]
            ],
        }
    return result


def _describe(o: object) -> str:
    name = type(o).__qualname__
    if type(o).__name__ in ("function", "method", "builtin_function_or_method", "coroutine"):
        return f"{name} {getattr(o, '__qualname__', '')}"
    if isinstance(o, dict):
        return f"dict({', '.join(map(str, list(o)[:4]))})"
    if type(o).__name__ == "frame":
        return f"frame {o.f_code.co_name} {o.f_code.co_filename.rsplit('/', 1)[-1]}:{o.f_lineno}"  # type: ignore[attr-defined]
    return name


def _shortest_cycle(start: object, garbage: dict[int, object]) -> list[str]:
    parents: dict[int, int | None] = {id(start): None}
    queue = collections.deque([start])
    while queue:
        o = queue.popleft()
        for referent in gc.get_referents(o):
            if referent is start:
                path = [o]
                while parents[id(path[-1])] is not None:
                    path.append(garbage[parents[id(path[-1])]])  # type: ignore[index]
                return [_describe(x) for x in reversed(path)] + [_describe(start)]
            if id(referent) in garbage and id(referent) not in parents:
                parents[id(referent)] = id(o)
                queue.append(referent)
    return []


def cycles() -> dict[str, Any]:
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        found = gc.collect()
    finally:
        gc.set_debug(0)
    garbage = {id(o): o for o in gc.garbage}
    by_type = collections.Counter(type(o).__qualname__ for o in gc.garbage)
    examples: dict[str, list[str]] = {}
    for o in gc.garbage:
        name = type(o).__qualname__
        if WATCHED.search(name) and name not in examples:
            examples[name] = _shortest_cycle(o, garbage)
    gc.garbage.clear()
    gc.collect()
    return {"unreachable": found, "by_type": by_type.most_common(40), "cycles": examples}


POOL_SIZE = 16384
POOL_OVERHEAD = 48  # sizeof(struct pool_header), rounded up to the 16-byte alignment


def _anonymous_regions() -> list[tuple[int, int]]:
    regions = []
    with open("/proc/self/maps", encoding="ascii") as maps:
        for line in maps:
            fields = line.split()
            if fields[1].startswith("rw") and (len(fields) < 6 or fields[5] == "[heap]"):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                regions.append((start, end))
    return regions


def _pool(address: int) -> dict[str, int] | None:
    """The header of a used pymalloc pool at `address`, if one is there."""
    header = ctypes.string_at(address, POOL_OVERHEAD)
    count = int.from_bytes(header[0:4], "little")
    arena, size_index = (int.from_bytes(header[i : i + 4], "little") for i in (32, 36))
    next_offset, max_offset = (int.from_bytes(header[i : i + 4], "little") for i in (40, 44))
    if size_index >= 32 or count == 0:
        return None
    size = (size_index + 1) * 16
    if max_offset != POOL_SIZE - size or not POOL_OVERHEAD <= next_offset <= POOL_SIZE:
        return None
    if (next_offset - POOL_OVERHEAD) % size or count > (POOL_SIZE - POOL_OVERHEAD) // size:
        return None
    free = int.from_bytes(header[8:16], "little")
    return {"count": count, "arena": arena, "size": size, "next": next_offset, "free": free}


def _live_blocks(address: int, pool: dict[str, int]) -> list[int] | None:
    size = pool["size"]
    carved = set(range(address + POOL_OVERHEAD, address + pool["next"], size))
    free, block = set(), pool["free"]
    while block and len(free) <= len(carved):
        if block not in carved:
            return None  # not a pool after all
        free.add(block)
        block = ctypes.c_void_p.from_address(block).value or 0
    live = sorted(carved - free)
    return live if len(live) == pool["count"] else None


def _ascii_text(block: int, size: int) -> str | None:
    """The text of a compact ASCII str at `block`, read from memory without trusting that it
    is one (a block whose second word points at `str` need not be a str): 3.11's
    PyASCIIObject is 48 bytes, then the characters."""
    length = int.from_bytes(ctypes.string_at(block + 16, 8), "little")
    state = ctypes.string_at(block + 32, 1)[0]
    compact_ascii = 0b11100100  # ready, ascii, compact, one byte per character
    if state & 0b11111100 != compact_ascii or 48 + length + 1 > size:
        return None
    return ctypes.string_at(block + 48, min(length, 50)).decode("ascii", errors="replace")


def _types() -> dict[int, str]:
    """Type names by address, built once (at the first `arenas`, the baseline): building it
    later would put its own blocks into the emptied pools it is meant to count."""
    types: dict[int, str] | None = _state.get("types")
    if types is None:
        types = {id(t): t.__qualname__ for t in gc.get_objects() if isinstance(t, type)}
        for module in list(sys.modules.values()):
            for value in list(getattr(module, "__dict__", {}).values()):
                if isinstance(value, type):
                    types[id(value)] = value.__qualname__
        # asyncio's C future iterator (what `await future` makes) is in no module's namespace.
        with contextlib.suppress(RuntimeError):
            future = asyncio.get_running_loop().create_future()
            types[id(type(future.__await__()))] = "FutureIter"
            future.cancel()
        _state["types"] = types
    return types


def arenas() -> dict[str, Any]:
    types = _types()
    by_arena: dict[int, list[int]] = {}
    kinds: dict[int, collections.Counter[str]] = {}
    for start, end in _anonymous_regions():
        for address in range((start + POOL_SIZE - 1) // POOL_SIZE * POOL_SIZE, end, POOL_SIZE):
            pool = _pool(address)
            if pool is None:
                continue
            live = _live_blocks(address, pool)
            if live is None:
                continue
            counts = by_arena.setdefault(pool["arena"], [0, 0])
            counts[0] += 1
            counts[1] += len(live)
            kind = kinds.setdefault(pool["arena"], collections.Counter())
            samples = _state.setdefault("samples", {}).setdefault(pool["arena"], [])
            for block in live:
                name = "non-object"
                for offset in (8, 24):  # ob_type without, then with, the 16-byte GC header
                    found = types.get(ctypes.c_void_p.from_address(block + offset).value or 0)
                    if found is not None:
                        name = found
                        if offset == 8 and name == "str" and len(samples) < 30:
                            text = _ascii_text(block, pool["size"])
                            if text is not None:
                                samples.append(text)
                        break
                kind[f"{name} ({pool['size']})"] += 1
    known: set[int] = _state.setdefault("arena_indices", set(by_arena))
    new = collections.Counter[str]()
    strings: list[str] = []
    for index in set(by_arena) - known:
        new.update(kinds[index])
        strings += _state["samples"].get(index, [])[:10]
    _state["samples"] = {}
    return {
        "arenas": len(by_arena),
        "used_pools": sum(pools for pools, _ in by_arena.values()),
        "live_blocks": sum(blocks for _, blocks in by_arena.values()),
        "new_arenas": len(set(by_arena) - known),
        "new_arenas_pools": sorted(by_arena[i][0] for i in set(by_arena) - known),
        "new_arenas_blocks": sorted(by_arena[i][1] for i in set(by_arena) - known),
        "new_arenas_types": new.most_common(40),
        "new_arenas_strings": strings[:120],
    }


def run(command: str) -> dict[str, Any]:
    started = time.perf_counter()
    out: dict[str, Any] = {"command": command}
    if command == "report":
        out.update(report())
    elif command == "collect":
        before = rss_kib()
        out["unreachable"] = gc.collect()
        out["rss_before_kib"], out["rss_after_kib"] = before, rss_kib()
    elif command == "trim":
        before = rss_kib()
        out["released"] = int(LIBC.malloc_trim(0)) if LIBC is not None else None
        out["rss_before_kib"], out["rss_after_kib"] = before, rss_kib()
    elif command == "typecache":
        before = rss_kib()
        sys._clear_type_cache()
        out["rss_before_kib"], out["rss_after_kib"] = before, rss_kib()
    elif command == "snapshot":
        if tracemalloc.is_tracing():
            _state["baseline"] = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(False, tracemalloc.__file__)]
            )
    elif command == "traced":
        out.update(traced())
    elif command == "arenas":
        out.update(arenas())
    elif command == "cycles":
        out.update(cycles())
    else:
        out["error"] = "unknown command"
    out["seconds"] = round(time.perf_counter() - started, 3)
    return out


def main() -> None:
    directory = Path(sys.argv[1])
    if os.environ.get("FLOOD_TRACEMALLOC"):
        tracemalloc.start(int(os.environ["FLOOD_TRACEMALLOC"]))

    def on_signal(signum: int, frame: FrameType | None) -> None:
        commands = (directory / "command").read_text(encoding="ascii").split()
        results = [run(command) for command in commands]
        _state["reports"] += 1
        final = directory / f"report-{_state['reports']}.json"
        partial = final.with_suffix(".part")
        partial.write_text(json.dumps(results), encoding="utf-8")
        partial.rename(final)

    signal.signal(signal.SIGUSR1, on_signal)
    sys.argv = ["app"]
    from app.__main__ import main as app_main

    sys.exit(app_main())


if __name__ == "__main__":
    main()
