"""Data pipeline throughput and memory at glaive's real size (~113k rows).

The bundled real rows (13 raw glaive + 300 LLaMA-Factory sharegpt) are repeated to `--rows`
rows and written as one JSON array, the shape of glaive's hub file. Two variants:
  repeat   - exact copies: dedup leaves ~210 unique queries (glaive itself repeats heavily);
  distinct - each copy's first user message gets a copy number, so every row is unique and
             the recipe draws from a large pool.
Measured: parse rows/s (parse + label, in memory), and the full `v2` build end to end
(read, parse, dedup, frozen eval, draw, leakage check, write) in a fresh process, with its
peak RSS; beside it, the peak RSS of merely `json.load`-ing the same file.

    python benchmarks/bench_data.py [--rows 113000] [--out artifacts/reports/bench_data.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import data
from data.labels import to_candidate
from data.sources import parse_row
from mlx_plamo3.io import atomic_write_json
from mlx_plamo3.paths import artifact_dir

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


def peak_rss_mib() -> float:
    """This process's peak resident memory.

    Linux: VmHWM, because ru_maxrss survives fork+exec and would report the parent's peak."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    # ru_maxrss is bytes on macOS, KiB elsewhere.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def bench_parse(rows: list[dict[str, Any]]) -> dict[str, float]:
    start = time.perf_counter()
    for index, row in enumerate(rows):
        to_candidate(parse_row(row), index)
    seconds = time.perf_counter() - start
    return {"rows": len(rows), "seconds": seconds, "rows_per_s": len(rows) / seconds}


def child(kind: str, source: str, out: str) -> None:
    """Runs in a fresh interpreter so its peak RSS is this measurement's alone."""
    from data.build import BuildConfig, build_dataset

    baseline = peak_rss_mib()
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
    print(
        json.dumps(
            {"seconds": seconds, "peak_rss_mib": peak_rss_mib(), "baseline_rss_mib": baseline}
            | extra
        )
    )


def run_child(kind: str, source: Path, out: Path) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(source), str(out)],
        check=True,
        capture_output=True,
        text=True,
    )
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    measured["rows_per_s"] = measured["rows"] / measured["seconds"]
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=113_000, help="rows in the scaled source")
    parser.add_argument(
        "--out",
        type=Path,
        default=artifact_dir("reports") / "bench_data.json",
        help="where the JSON results go",
    )
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    results: dict[str, Any] = {
        "rows": args.rows,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "variants": {},
    }
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in ("repeat", "distinct"):
            rows = scaled_rows(args.rows, distinct=variant == "distinct")
            source = Path(tmp) / f"{variant}.json"
            source.write_text(json.dumps(rows, indent=1, ensure_ascii=False), encoding="utf-8")
            parse = bench_parse(rows)
            del rows
            build = run_child("build", source, Path(tmp) / f"out-{variant}")
            load = run_child("json_load", source, Path(tmp) / "unused")
            mib = source.stat().st_size / 2**20
            results["variants"][variant] = {
                "source_mib": mib,
                "parse": parse,
                "v2_build": build,
                "json_load_only": load,
            }
            table.append((variant, mib, parse, build, load))

    print(f"{args.rows:,} rows ({platform.machine()}, Python {platform.python_version()})")
    header = (
        f"{'variant':<9} {'file MiB':>8} {'parse rows/s':>13} {'v2 build rows/s':>16} "
        f"{'build s':>8} {'build peak MiB':>15} {'json.load peak MiB':>19}"
    )
    print(header)
    print("-" * len(header))
    for variant, mib, parse, build, load in table:
        print(
            f"{variant:<9} {mib:>8.1f} {parse['rows_per_s']:>13,.0f} "
            f"{build['rows_per_s']:>16,.0f} {build['seconds']:>8.1f} "
            f"{build['peak_rss_mib']:>15.0f} {load['peak_rss_mib']:>19.0f}"
        )
    print(f"(interpreter + imports before the build: {table[0][3]['baseline_rss_mib']:.0f} MiB)")
    atomic_write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
