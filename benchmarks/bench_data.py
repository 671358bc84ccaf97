"""Data pipeline throughput and memory at glaive's real size (~113k rows).

The bundled real rows (13 raw glaive + 300 LLaMA-Factory sharegpt) are repeated to `--rows`
rows and written as one JSON array, the shape of glaive's hub file. Two variants:
  repeat   - exact copies: dedup leaves ~210 unique queries (glaive itself repeats heavily);
  distinct - each copy's first user message gets a copy number, so every row is unique and
             the recipe draws from a large pool.
Measured, medians over --repeats: parse rows/s (parse + label, in memory), and the full `v2`
build end to end (read, parse, dedup, frozen eval, draw, leakage check, write) in a fresh
process, with its peak RSS; beside it, the peak RSS of merely `json.load`-ing the same file.

    python -m benchmarks.bench_data [--rows 113000] [--repeats 3] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import data
from benchmarks.common import (
    WorkDir,
    add_common_args,
    emit_result,
    median,
    own_peak_rss_bytes,
    parse_result_line,
    print_table,
    python_command,
    run_child,
    write_report,
)
from data.build import BuildConfig, build_dataset
from data.labels import to_candidate
from data.sources import parse_row

NAME = "bench_data"
SAMPLES = Path(data.__file__).parent / "samples"


def sample_rows() -> list[dict[str, Any]]:
    glaive = SAMPLES / "glaive-function-calling-v2.sample.jsonl"
    rows = [json.loads(line) for line in glaive.read_text(encoding="utf-8").splitlines()]
    demo = SAMPLES / "llamafactory_glaive_toolcall_en_demo.json"
    return rows + json.loads(demo.read_text(encoding="utf-8"))


def with_copy_number(row: dict[str, Any], copy: int) -> dict[str, Any]:
    """The row with its first user message made unique (both formats)."""
    row = json.loads(json.dumps(row))
    if "chat" in row:
        row["chat"] = row["chat"].replace("USER: ", f"USER: [{copy}] ", 1)
    else:
        first = row["conversations"][0]
        first["value"] = f"[{copy}] {first['value']}"
    return row


def scaled_rows(n: int, distinct: bool) -> list[dict[str, Any]]:
    base = sample_rows()
    rows = []
    for i in range(n):
        row = base[i % len(base)]
        rows.append(with_copy_number(row, i // len(base)) if distinct else row)
    return rows


def bench_parse(rows: list[dict[str, Any]]) -> dict[str, float]:
    start = time.perf_counter()
    for index, row in enumerate(rows):
        to_candidate(parse_row(row), index)
    seconds = time.perf_counter() - start
    return {"rows": len(rows), "seconds": seconds, "rows_per_s": len(rows) / seconds}


def child(kind: str, source: str, out: str) -> None:
    """Runs in a fresh interpreter so its peak RSS is this measurement's alone."""
    baseline = own_peak_rss_bytes() / 2**20
    start = time.perf_counter()
    if kind == "json_load":
        with open(source, encoding="utf-8") as handle:
            rows = len(json.load(handle))
        extra: dict[str, Any] = {"rows": rows}
    else:
        _, plan = build_dataset(
            BuildConfig(recipe="v2", sources=(source,), out=Path(out), force=True, progress=False)
        )
        extra = {"rows": plan.audit["rows"]["source"], "train": plan.audit["train"]["built"]}
    seconds = time.perf_counter() - start
    peak = own_peak_rss_bytes() / 2**20
    emit_result({"seconds": seconds, "peak_rss_mib": peak, "baseline_rss_mib": baseline} | extra)


def measure_in_child(kind: str, source: Path, out: Path) -> dict[str, Any]:
    """`kind` (build or json_load) in a fresh interpreter, so its peak RSS is its own."""
    command = python_command("-m", "benchmarks.bench_data", "--child", kind, str(source), str(out))
    child = run_child(command)
    if child.returncode != 0:
        raise SystemExit(f"{kind} failed (exit {child.returncode}):\n{child.output[-3000:]}")
    measured = parse_result_line(child.output)
    measured["rows_per_s"] = measured["rows"] / measured["seconds"]
    return measured


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, NAME, repeats=3)
    parser.add_argument("--rows", type=int, default=113_000, help="rows in the scaled source")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    started = time.perf_counter()

    variants: dict[str, Any] = {}
    table = []
    with WorkDir(args.work_dir, "bench_data_") as work:
        for variant in ("repeat", "distinct"):
            rows = scaled_rows(args.rows, distinct=variant == "distinct")
            source = work / f"{variant}.json"
            source.write_text(json.dumps(rows, indent=1, ensure_ascii=False), encoding="utf-8")
            parses = [bench_parse(rows) for _ in range(args.repeats)]
            del rows
            builds = [
                measure_in_child("build", source, work / f"out-{variant}")
                for _ in range(args.repeats)
            ]
            load = measure_in_child("json_load", source, work / "unused")
            mib = source.stat().st_size / 2**20
            build_seconds = median([b["seconds"] for b in builds])
            build_peak = max(b["peak_rss_mib"] for b in builds)
            variants[variant] = {
                "source_mib": mib,
                "parse": {
                    "rows_per_s": median([p["rows_per_s"] for p in parses]),
                    "runs": parses,
                },
                "v2_build": {
                    "rows": builds[0]["rows"],
                    "seconds": build_seconds,
                    "rows_per_s": builds[0]["rows"] / build_seconds,
                    "peak_rss_mib": build_peak,
                    "baseline_rss_mib": builds[0]["baseline_rss_mib"],
                    "runs": builds,
                },
                "json_load_only": load,
            }
            table.append(
                [
                    variant,
                    mib,
                    variants[variant]["parse"]["rows_per_s"],
                    variants[variant]["v2_build"]["rows_per_s"],
                    build_seconds,
                    build_peak,
                    load["peak_rss_mib"],
                ]
            )
    print_table(
        [
            "variant",
            "file MiB",
            "parse rows/s",
            "v2 build rows/s",
            "build s",
            "build peak MiB",
            "json.load peak MiB",
        ],
        table,
        title=f"{args.rows:,} rows; interpreter + imports before the build: "
        f"{variants['repeat']['v2_build']['baseline_rss_mib']:.0f} MiB",
    )
    write_report(
        args.out,
        NAME,
        {"rows": args.rows},
        {"variants": variants},
        [
            "build and json.load each run in a fresh process; peak RSS is that process's own",
            "parse rows/s and build seconds are medians over --repeats; build peak the largest",
        ],
        started,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
