"""docs/yjs.md shows the JavaScript client in full: that copy must be the file itself.

The file is what the Node test runs (tests/integration/test_yjs_node.py); the page is what people
copy from. Comparing them keeps the page from drifting from the tested code.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "yjs.md"
CLIENT = ROOT / "docs" / "clients" / "texflow-yjs.mjs"
# The client's code block is the one whose first line names the file.
FIRST_LINE = "// texflow-yjs.mjs:"


def javascript_blocks(markdown: str) -> list[str]:
    """The text of every ```javascript fenced block, each ending with a newline."""
    blocks: list[str] = []
    current: list[str] | None = None
    for line in markdown.splitlines(keepends=True):
        if current is None:
            if line.rstrip() == "```javascript":
                current = []
        elif line.rstrip() == "```":
            blocks.append("".join(current))
            current = None
        else:
            current.append(line)
    assert current is None, "a ```javascript block in docs/yjs.md is never closed"
    return blocks


def test_the_guide_embeds_the_client_file_verbatim() -> None:
    embedded = [
        b for b in javascript_blocks(GUIDE.read_text(encoding="utf-8")) if b.startswith(FIRST_LINE)
    ]
    assert len(embedded) == 1, f"expected one code block of docs/yjs.md starting {FIRST_LINE!r}"
    client = CLIENT.read_text(encoding="utf-8")
    assert client.startswith(FIRST_LINE)
    # On a mismatch: copy docs/clients/texflow-yjs.mjs into that block again.
    assert embedded[0] == client
