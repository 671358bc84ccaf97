"""Conditions: the evaluation records files of a results folder, rescored, labelled and ordered.

Every records file becomes one `Condition`: its rows, their verdicts and a summary computed here
with the same scoring code as `mlx-plamo score` (so a page's badges and rates cannot drift
apart), next to the summary the file stored. Labels come from the summaries' condition names,
prefixed by the subfolder for files below the results folder and made unique by file name;
order is top-level first, then base, base-fewshot and the rest by name. A JSON file that is not
records is skipped with a note, never fatal. `format_rate_cell` and `provenance` turn a
condition into the text of its table row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.records import Records, RecordsError, load_records
from eval.scoring import Verdict, describe_rate, score_rows, summarize

# Conditions that come first, in this order; all others follow by name.
LEADING_CONDITIONS = ("base", "base-fewshot")
# Summary fields shown as provenance (the eval command records model, adapter and data).
PROVENANCE_KEYS = ("model", "adapter", "data", "data_sha256", "minutes", "decoding")


@dataclass(frozen=True)
class Condition:
    """One records file, rescored: `summary` is ours, `stored` the file's own."""

    label: str
    path: Path
    stored: dict[str, Any]
    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    verdicts: list[Verdict]


def find_records_files(results: Path, recursive: bool = False) -> list[Path]:
    pattern = "**/*.json" if recursive else "*.json"
    return sorted(p for p in results.glob(pattern) if p.is_file())


def condition_sort_key(label: str) -> tuple[int, str, int, str]:
    """Top-level conditions before those in subfolders; base, base-fewshot, then by name."""
    folder, _, name = label.rpartition("/")
    lead = LEADING_CONDITIONS.index(name) if name in LEADING_CONDITIONS else len(LEADING_CONDITIONS)
    return (1 if folder else 0, folder, lead, name)


def condition_label(records: Records, results: Path) -> str:
    """The summary's condition, prefixed by the subfolder for files below the results folder
    (the study's leaked-eval/ reuses the names base, base-fewshot and lora)."""
    folder = records.path.parent.relative_to(results).as_posix()
    return records.condition if folder == "." else f"{folder}/{records.condition}"


def unique_labels(labels: Sequence[str], paths: Sequence[Path]) -> list[str]:
    """Labels made unique by appending the file name where two files share a condition."""
    seen: dict[str, int] = {}
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
    return [
        f"{label} ({path.name})" if seen[label] > 1 else label
        for label, path in zip(labels, paths, strict=True)
    ]


def load_conditions(
    results: Path, mode: str = "study", recursive: bool = False
) -> tuple[list[Condition], list[str]]:
    """Rescored conditions in report order, and a note for each JSON file that is not records."""
    loaded: list[Records] = []
    skipped: list[str] = []
    for path in find_records_files(results, recursive):
        try:
            loaded.append(load_records(path))
        except RecordsError as exc:
            skipped.append(str(exc))
    labels = unique_labels([condition_label(r, results) for r in loaded], [r.path for r in loaded])
    conditions = [
        Condition(
            label=label,
            path=records.path,
            stored=records.summary,
            summary=summarize(
                records.rows, mode, condition=label, minutes=records.summary.get("minutes")
            ),
            rows=records.rows,
            verdicts=score_rows(records.rows, mode),
        )
        for label, records in zip(labels, loaded, strict=True)
    ]
    conditions.sort(key=lambda c: condition_sort_key(c.label))
    return conditions, skipped


def format_rate_cell(summary: Mapping[str, Any], key: str) -> dict[str, str]:
    """A table cell: the rate, k/n with its 95% Wilson interval, and an honest hover text."""
    k, n = summary["counts"][key]
    if not n:
        return {"rate": "–", "detail": "no cases", "title": "no cases"}
    lo, hi = summary["intervals"][key]
    return {
        "rate": f"{k / n:.1%}",
        "detail": f"{k}/{n} · 95% CI {lo:.1%}–{hi:.1%}",
        "title": describe_rate(k, n),
    }


def provenance(condition: Condition, results: Path) -> dict[str, str]:
    """The summary's model / adapter / data / timing fields that are present, as text."""
    out = {"file": condition.path.relative_to(results).as_posix()}
    for key in PROVENANCE_KEYS:
        value = condition.stored.get(key)
        if value is None or value == "":
            continue
        if key == "data_sha256" and isinstance(value, str):
            value = value[:12]
        if isinstance(value, Mapping):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        out[key] = str(value)
    return out
