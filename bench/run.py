"""`python -m bench`: run the scenarios, print the table, write the JSON.

python -m bench                      # everything (about 17 minutes; D holds for 5 minutes)
python -m bench --quick              # smaller and shorter, for a quick check
python -m bench --scenario A,B       # a selection (--scenario E: documents alone)
python -m bench --scenario F         # documents on two instances, PostgreSQL and Redis
python -m bench --out results.json   # somewhere else than bench/results/latest.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop

from bench.experiments import PATCHES
from bench.measure import machine, revision
from bench.scenarios.documents import scenario_e
from bench.scenarios.documents_cluster import scenario_f
from bench.scenarios.fanout import scenario_b
from bench.scenarios.harness import Outcome, Plan, Row
from bench.scenarios.idle import scenario_d
from bench.scenarios.memory import scenario_a
from bench.scenarios.redis_hop import scenario_c
from bench.servers import Pinning, raise_fd_limit

RESULTS = Path(__file__).resolve().parent / "results"
SCENARIOS = {
    "A": "idle memory per connection",
    "B": "room fan-out: throughput and latency",
    "C": "across two instances through Redis",
    "D": "many connections held with heartbeats",
    "E": "documents: every update applied, against the y-websocket server",
    "F": "documents across two instances on one PostgreSQL and one Redis",
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="smaller N and a 20 s hold")
    parser.add_argument("--scenario", default="A,B,C,D,E,F", help="comma-separated, e.g. A,B")
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json", help="JSON path")
    parser.add_argument("--hold", type=float, help="D: seconds to hold the connections")
    parser.add_argument("--connections", type=int, help="D: how many connections")
    parser.add_argument(
        "--render", type=Path, help="print a JSON result's table as Markdown, and exit"
    )
    parser.add_argument(
        "--service-patches",
        default="",
        help=f"prototypes from bench.experiments to apply to the service: {', '.join(PATCHES)}",
    )
    args = parser.parse_args(argv)
    args.scenarios = [s.strip().upper() for s in args.scenario.split(",") if s.strip()]
    args.patches = tuple(p.strip() for p in args.service_patches.split(",") if p.strip())
    if set(args.patches) - set(PATCHES):
        parser.error(f"unknown patch(es); choose from {', '.join(PATCHES)}")
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {sorted(unknown)}; choose from {sorted(SCENARIOS)}")
    return args


def fmt(value: float | None, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if unit == "1/s" or abs(value) >= 1000:
        return f"{value:,.0f}"
    if unit == "ms":
        return f"{value:.3f}"
    if unit == "% core":
        return f"{value:.2f}"
    if float(value).is_integer():
        return f"{value:.0f}"
    return f"{value:.1f}"


def noise(details: Any) -> list[float]:
    """Every `server_core_other_pct` kept in the details: how much of the server core other
    processes took while a figure was measured."""
    found: list[float] = []
    if isinstance(details, dict):
        for key, value in details.items():
            if key == "server_core_other_pct" and isinstance(value, int | float):
                found.append(float(value))
            else:
                found.extend(noise(value))
    elif isinstance(details, list):
        for item in details:
            found.extend(noise(item))
    return found


def table(rows: list[Row]) -> str:
    header = ("scenario", "metric", "service", "reference", "ratio", "target", "verdict")
    lines = [
        (
            row.scenario,
            f"{row.metric} ({row.unit})" if row.unit else row.metric,
            fmt(row.service, row.unit),
            fmt(row.reference, row.unit),
            "n/a" if row.ratio is None else f"{row.ratio:.2f}",
            row.target,
            row.verdict,
        )
        for row in rows
    ]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *lines, strict=True)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    for line in lines:
        cells = [
            c.rjust(w) if i in (2, 3, 4) else c.ljust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


def markdown(rows: list[dict[str, Any]]) -> str:
    """A result file's rows as a Markdown table (for docs/performance.md)."""
    out = [
        "| scenario | metric | service | reference | ratio | target | verdict |",
        "| --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for row in rows:
        unit = row["unit"]
        metric = f"{row['metric']} ({unit})" if unit else row["metric"]
        ratio = "n/a" if row["ratio"] is None else f"{row['ratio']:.2f}"
        cells = [
            row["scenario"],
            metric,
            fmt(row["service"], unit),
            fmt(row["reference"], unit),
            ratio,
            row["target"],
            f"**{row['verdict']}**" if row["verdict"] else "",
        ]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


async def run(args: argparse.Namespace, plan: Plan, pinning: Pinning) -> dict[str, Any]:
    steps: dict[str, Callable[[], Awaitable[Outcome]]] = {
        "A": lambda: scenario_a(plan, pinning, log),
        "B": lambda: scenario_b(plan, pinning, log),
        "C": lambda: scenario_c(plan, pinning, log),
        "D": lambda: scenario_d(plan, pinning, log),
        "E": lambda: scenario_e(plan, pinning, log),
        "F": lambda: scenario_f(plan, pinning, log),
    }
    rows: list[Row] = []
    details: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name in args.scenarios:
        log(f"scenario {name}: {SCENARIOS[name]}")
        started = time.monotonic()
        try:
            outcome = await steps[name]()
        except Exception as exc:
            log(f"scenario {name} failed: {exc}")
            traceback.print_exc()
            errors[name] = f"{type(exc).__name__}: {exc}"
            rows.append(Row(name, "scenario failed", "", None, None, verdict="FAIL", note=str(exc)))
            continue
        rows.extend(outcome.rows)
        details[name] = {**outcome.details, "seconds": round(time.monotonic() - started, 1)}
    return {"rows": rows, "details": details, "errors": errors}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        print(markdown(json.loads(args.render.read_text(encoding="utf-8"))["rows"]))
        return 0
    plan = Plan.quick_plan() if args.quick else Plan()
    if args.hold is not None:
        plan = dataclasses.replace(plan, hold_seconds=args.hold)
    if args.connections is not None:
        plan = dataclasses.replace(plan, many=args.connections)
    if args.patches:
        plan = dataclasses.replace(plan, service_patches=args.patches)
        log(f"the service runs with prototype patches: {', '.join(args.patches)}")
    # Described before pinning, which narrows this process to the load core.
    info = machine()
    measured = revision()
    pinning = Pinning()
    pinning.pin_load()
    # Servers and holders inherit the limit: raise it before starting any.
    fd_limit = raise_fd_limit(plan.many + 2000)
    started = datetime.now(UTC)
    log(
        f"{info['cpu_model']}, {info['nproc']} cores, Python {info['python']}; {pinning.describe()}"
    )
    outcome = uvloop.run(run(args, plan, pinning))
    rows: list[Row] = outcome["rows"]
    info["loadavg_at_end"] = list(os.getloadavg())
    print()
    if plan.service_patches:
        print(f"service = the service with bench.experiments {', '.join(plan.service_patches)}")
    print(table(rows))
    verdicts = {f"{r.scenario}: {r.metric}": r.verdict for r in rows if r.verdict}
    others = sorted(noise(outcome["details"]))
    interference = {
        "measurements": len(others),
        "median_pct": others[len(others) // 2] if others else None,
        "max_pct": others[-1] if others else None,
        "over_limit": sum(value > plan.noise_limit for value in others),
    }
    report = {
        "generated_at": started.isoformat(timespec="seconds"),
        "duration_s": round((datetime.now(UTC) - started).total_seconds(), 1),
        "command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "revision": measured,
        "machine": info,
        "settings": {
            **dataclasses.asdict(plan),
            **pinning.describe(),
            "fd_limit": fd_limit,
            "scenarios": args.scenarios,
        },
        "rows": [row.as_json() for row in rows],
        "verdicts": verdicts,
        "interference": interference,
        "details": outcome["details"],
        "errors": outcome["errors"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    if interference["over_limit"]:
        print(
            f"\nnoisy machine: in {interference['over_limit']} of {len(others)} measurements "
            f"other processes took more than {plan.noise_limit:g}% of the server core "
            f"(up to {interference['max_pct']}%); see details.*.cpu.server_core_other_pct"
        )
    passed = sum(v == "PASS" for v in verdicts.values())
    print(f"\n{passed} of {len(verdicts)} targets met; JSON written to {args.out}")
    # Missed targets are results; only a scenario that could not be measured fails the run.
    return 1 if outcome["errors"] else 0
