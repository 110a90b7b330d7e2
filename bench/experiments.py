"""Prototypes of changes to measure before anyone makes them in app/:
`python -m bench --service-patches gc-freeze ...` starts the service as
`python -m bench.experiments gc-freeze`, which applies the patches in that process and then
runs `app.__main__.main()` as `python -m app` would. A default `make bench` applies none.

- gc-freeze: `gc.freeze()` once the app is built, so collections stop re-scanning the
  objects of start-up, and a larger first-generation threshold.
- system-malloc: the interpreter started again with `PYTHONMALLOC=malloc`, so that small
  objects come from glibc's malloc instead of pymalloc's 1 MiB arenas (what this costs in
  CPU, against what it gives back after a flood: docs/performance.md, "Memory after a
  connection flood").

The prepared-frames and direct-ws prototypes measured in bench/results/experiment-*.json
were adopted in app/ (edb0310, f1920b9) and then removed from here, since they could only
refuse to apply to a service that has them; their code is in this file's history (069243c).
"""

from __future__ import annotations

import gc
import os
import sys
from typing import Any

PATCHES = ("gc-freeze", "system-malloc")


def gc_freeze() -> None:
    import app.upgrade.server

    serve = app.upgrade.server.serve

    def frozen_serve(application: Any, settings: Any) -> None:
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 20)
        serve(application, settings)

    app.upgrade.server.serve = frozen_serve  # type: ignore[assignment]


def main() -> int:
    chosen = [name for name in (sys.argv[1] if len(sys.argv) > 1 else "").split(",") if name]
    unknown = set(chosen) - set(PATCHES)
    if unknown:
        print(f"unknown patches {sorted(unknown)}; choose from {PATCHES}", file=sys.stderr)
        return 2
    if "system-malloc" in chosen and os.environ.get("PYTHONMALLOC") != "malloc":
        # The allocator is chosen when the interpreter starts: start it again.
        environment = {**os.environ, "PYTHONMALLOC": "malloc"}
        argv = [sys.executable, "-m", "bench.experiments", *sys.argv[1:]]
        os.execve(sys.executable, argv, environment)  # noqa: S606
    if "gc-freeze" in chosen:
        gc_freeze()
    sys.argv = [sys.argv[0]]
    from app.__main__ import main as app_main

    return app_main([])


if __name__ == "__main__":
    sys.exit(main())
