"""`mlx-plamo data build`: sources → parse → label → dedup → frozen eval → recipe draw →
leakage guard → one atomically written directory (train, eval, audit, manifest)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from data.audit import counter_dict, label_counts, naive_nocall_breakdown, share
from data.call_format import CALL_FORMAT_KEY, DEFAULT_CALL_FORMAT, check_call_format
from data.frozen import (
    FROZEN_EVAL_FILE,
    FrozenQuestion,
    FrozenReport,
    frozen_eval_rows,
    load_frozen_questions,
)
from data.labels import to_candidate
from data.leakage import check_no_leak
from data.recipes import (
    DEFAULT_SEED,
    DEFAULT_SIZES,
    RECIPES,
    Draw,
    fresh_eval,
    train_examples,
)
from data.schema import CALL, DEFERRED_CALL, Candidate, ParseError
from data.sources import DEFAULT_SOURCE, Row, SourceInfo, open_source, parse_row
from data.store import AUDIT_FILE, EVAL_FILE, FRESH_EVAL_FILE, MANIFEST_FILE, TRAIN_FILE
from data.v3 import DEFAULT_V3_SIZES, V3_CLASSES, class_counts, v3_examples
from mlx_plamo3.errors import InputError, PlamoError
from mlx_plamo3.io import (
    atomic_directory,
    atomic_write_json,
    atomic_write_text,
    check_replaceable,
    file_sha256,
)
from mlx_plamo3.paths import artifact_dir

BUILD_WRITER = "mlx-plamo data build"  # names its output directories (mlx_plamo3.io)
SKIP_EXAMPLES = 3  # per reason, in the audit, so a skip can be traced to its row
SHOWN_ABSENT = 5  # frozen questions named in the warning


class NoUsableRowsError(PlamoError, ValueError):
    """A source gave no row the build can use; `audit` says what was skipped and where."""

    def __init__(self, message: str, audit: dict[str, Any]):
        super().__init__(message)
        self.audit = audit


class FrozenEvalError(PlamoError, RuntimeError):
    """`--require-frozen-eval` was given and the source lacks some frozen questions."""


@dataclass
class BuildConfig:
    recipe: str
    sources: tuple[str, ...] = (DEFAULT_SOURCE,)
    out: Path | None = None
    seed: int = DEFAULT_SEED
    n_call: int | None = None  # None: the recipe's default
    n_nocall: int | None = None
    fresh_eval: bool = False
    require_frozen_eval: bool = False
    revision: str | None = None
    force: bool = False
    progress: bool = True
    call_format: str = DEFAULT_CALL_FORMAT
    # v3's extra classes: rows wanted per class (missing ones: DEFAULT_V3_SIZES)
    class_sizes: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise InputError(f"unknown recipe {self.recipe!r}; expected one of {RECIPES}")
        if not self.sources:
            raise InputError("at least one source is needed")
        check_call_format(self.call_format)
        unknown = set(self.class_sizes) - set(V3_CLASSES)
        if unknown:
            raise InputError(f"unknown v3 classes {sorted(unknown)}; expected {V3_CLASSES}")
        if any(n < 0 for n in self.class_sizes.values()):
            raise InputError("example counts must not be negative")
        if self.class_sizes and self.recipe != "v3":
            raise InputError(f"class sizes are v3's; recipe {self.recipe} has no such classes")

    def v3_sizes(self) -> dict[str, int]:
        return {**DEFAULT_V3_SIZES, **self.class_sizes}

    def sizes(self) -> tuple[int, int]:
        default_call, default_nocall = DEFAULT_SIZES[self.recipe]
        n_call = default_call if self.n_call is None else self.n_call
        n_nocall = default_nocall if self.n_nocall is None else self.n_nocall
        if n_call < 0 or n_nocall < 0:
            raise InputError("example counts must not be negative")
        return n_call, n_nocall

    def out_dir(self) -> Path:
        return self.out if self.out is not None else artifact_dir("data", self.recipe)


@dataclass
class Ingested:
    """Everything one pass over the sources yields."""

    candidates: list[Candidate]  # unique queries, first occurrence, source order
    matches: dict[str, list[Candidate]]  # frozen query key -> every row with that query
    sources: list[SourceInfo]
    parsed: int = 0
    duplicates: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    skip_examples: dict[str, list[str]] = field(default_factory=dict)
    labels_all: Counter[str] = field(default_factory=Counter)
    usable_by_source: list[int] = field(default_factory=list)  # parsed rows, per source
    skipped_by_source: list[Counter[str]] = field(default_factory=list)

    @property
    def source_rows(self) -> int:
        return sum(info.rows for info in self.sources)


def _counted(rows: Iterator[Row], info: SourceInfo) -> Iterator[tuple[int, Row]]:
    for number, row in enumerate(rows, start=1):
        info.rows = number
        yield number, row


def ingest(
    sources: Iterable[str],
    frozen_keys: set[str],
    revision: str | None = None,
    progress: bool = False,
    keep_turns: bool = False,
) -> Ingested:
    """One streaming pass: parse, label and dedup every row of every source, in order (with
    `keep_turns`, each candidate keeps its conversation's turns, as v3 needs)."""
    result = Ingested(candidates=[], matches=defaultdict(list), sources=[])
    unique: dict[str, Candidate] = {}
    index = 0
    for spec in sources:
        info, rows, total = open_source(spec, revision)
        result.sources.append(info)
        result.usable_by_source.append(0)
        result.skipped_by_source.append(Counter())
        bar = tqdm(
            _counted(rows, info),
            total=total if total >= 0 else None,
            desc=f"parsing {Path(spec).name or spec}",
            unit=" rows",
            disable=not progress,
        )
        for number, row in bar:
            try:
                if isinstance(row, ParseError):
                    raise row
                candidate = to_candidate(parse_row(row), index, keep_turns)
            except ParseError as exc:
                result.skipped[exc.reason] += 1
                result.skipped_by_source[-1][exc.reason] += 1
                examples = result.skip_examples.setdefault(exc.reason, [])
                if len(examples) < SKIP_EXAMPLES:
                    examples.append(f"{spec} row {number}: {exc.detail}")
                continue
            finally:
                index += 1
            result.parsed += 1
            result.usable_by_source[-1] += 1
            result.labels_all[candidate.label] += 1
            if candidate.key in frozen_keys:
                result.matches[candidate.key].append(candidate)
            if candidate.key in unique:
                result.duplicates += 1
            else:
                unique[candidate.key] = candidate
    result.candidates = list(unique.values())
    return result


@dataclass
class Plan:
    """A build, fully computed and checked, before anything is written."""

    config: BuildConfig
    train: Draw
    eval_rows: list[dict[str, Any]]
    fresh: Draw | None
    audit: dict[str, Any]
    sources: list[SourceInfo]
    warnings: list[str]


def absent_warning(report: FrozenReport, total: int) -> str:
    shown = "; ".join(repr(q) for q in report.absent[:SHOWN_ABSENT])
    more = (
        f"; ... {len(report.absent) - SHOWN_ABSENT} more"
        if len(report.absent) > SHOWN_ABSENT
        else ""
    )
    return (
        f"{len(report.absent)} of {total} frozen eval questions are not in the source "
        f"({len(report.synthesized)} call: tool synthesized from the gold call; "
        f"{len(report.missing)} no-call: no tools listed): {shown}{more}"
    )


def shortfall_warnings(name: str, draw: Draw) -> list[str]:
    return [
        f"{name}: asked for {draw.requested[kind]:,} {kind} examples, the source has only "
        f"{draw.available[kind]:,} after dedup and eval exclusion"
        for kind in draw.shortfall
    ]


def check_every_source_usable(data: Ingested) -> None:
    """Raise NoUsableRowsError naming each source that gave no usable row, with its skips."""
    empty = [i for i, usable in enumerate(data.usable_by_source) if usable == 0]
    if not empty:
        return
    lines = []
    for i in empty:
        info, skipped = data.sources[i], data.skipped_by_source[i]
        reasons = ", ".join(f"{reason}: {n}" for reason, n in skipped.most_common())
        what = f"{info.rows} rows, all skipped ({reasons})" if info.rows else "no rows at all"
        lines.append(f"  {info.spec}: {what}")
    audit = {
        "sources": [
            {**info.to_json(), "usable": usable, "skipped": counter_dict(skipped)}
            for info, usable, skipped in zip(
                data.sources, data.usable_by_source, data.skipped_by_source, strict=True
            )
        ],
        "skipped_examples": {k: data.skip_examples[k] for k in sorted(data.skip_examples)},
    }
    raise NoUsableRowsError(
        f"{len(empty)} of {len(data.sources)} source(s) gave no usable rows:\n" + "\n".join(lines),
        audit,
    )


def plan_build(config: BuildConfig, questions: list[FrozenQuestion] | None = None) -> Plan:
    """Compute the whole build in memory; raise before writing if anything is wrong."""
    n_call, n_nocall = config.sizes()
    questions = load_frozen_questions() if questions is None else questions
    frozen_keys = {q.key for q in questions}
    v3 = config.recipe == "v3"
    data = ingest(config.sources, frozen_keys, config.revision, config.progress, keep_turns=v3)
    check_every_source_usable(data)

    warnings: list[str] = []
    eval_rows, report = frozen_eval_rows(questions, data.matches, config.call_format)
    if report.absent:
        message = absent_warning(report, len(questions))
        if config.require_frozen_eval:
            raise FrozenEvalError(message + " (--require-frozen-eval was given)")
        warnings.append(message)

    # Eval queries never reach the training pool: excluded by the same key as the dedup.
    pool = [c for c in data.candidates if c.key not in frozen_keys]
    fresh = None
    if config.fresh_eval:
        fresh = fresh_eval(pool, config.seed, call_format=config.call_format)
        warnings += shortfall_warnings("fresh eval", fresh)
        pool = [c for c in pool if c.key not in fresh.keys]
    train = train_examples(config.recipe, pool, n_call, n_nocall, config.seed, config.call_format)
    if v3:
        eval_keys = frozen_keys | (fresh.keys if fresh else set())
        sizes = config.v3_sizes()
        train = v3_examples(train, pool, eval_keys, sizes, config.call_format, config.seed)
    warnings += shortfall_warnings(f"{config.recipe} train", train)
    if not train.rows:
        reason = (
            "--n-call and --n-nocall are 0"
            if n_call == n_nocall == 0
            else "the source has no usable examples"
        )
        warnings.append(f"the training set is empty: {reason}")

    check_no_leak(train.rows, eval_rows + (fresh.rows if fresh else []))

    audit = make_audit(config, data, report, len(questions), train, fresh, warnings)
    return Plan(config, train, eval_rows, fresh, audit, data.sources, warnings)


def make_audit(
    config: BuildConfig,
    data: Ingested,
    report: FrozenReport,
    n_questions: int,
    train: Draw,
    fresh: Draw | None,
    warnings: list[str],
) -> dict[str, Any]:
    labels = Counter(c.label for c in data.candidates)
    unlisted = sum(
        1 for c in data.candidates if c.label == CALL and c.call and c.call.name not in c.tool_names
    )
    return {
        "recipe": config.recipe,
        "seed": config.seed,
        CALL_FORMAT_KEY: config.call_format,
        "rows": {
            "source": data.source_rows,
            "parsed": data.parsed,
            "skipped_total": sum(data.skipped.values()),
            "skipped": counter_dict(data.skipped),
            "skipped_examples": {k: data.skip_examples[k] for k in sorted(data.skip_examples)},
            "duplicates_removed": data.duplicates,
            "unique_queries": len(data.candidates),
        },
        "labels_all_rows": label_counts(data.labels_all),
        "labels": label_counts(labels),
        "calls_to_unlisted_tool": unlisted,
        "naive_nocall": naive_nocall_breakdown(labels),
        "frozen_eval": {
            "questions": n_questions,
            "from_source": report.from_source,
            "synthesized": len(report.synthesized),
            "missing": len(report.missing),
            "not_in_source": report.absent,
        },
        "fresh_eval": _draw_audit(fresh) if fresh else None,
        "train": {
            **_draw_audit(train),
            "total": len(train.rows),
            "nocall_labels": counter_dict(train.nocall_labels),
            "nocall_deferred_share": share(
                train.nocall_labels[DEFERRED_CALL], train.built["nocall"]
            ),
            # v3: rows per class, whichever draw took them (v2's strict no-calls that decline
            # count as decline_mined)
            "classes": class_counts(train.rows) if config.recipe == "v3" else None,
        },
        "leakage": {
            "overlap": 0,
            "checked_against": [EVAL_FILE] + ([FRESH_EVAL_FILE] if fresh else []),
        },
        "warnings": warnings,
    }


def _draw_audit(draw: Draw) -> dict[str, Any]:
    return {"requested": draw.requested, "available": draw.available, "built": draw.built}


def jsonl_text(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_plan(plan: Plan, out: Path, force: bool = False) -> None:
    """Write the directory in one rename; no timestamps, so a rebuild is byte-identical."""
    files = {TRAIN_FILE: plan.train.rows, EVAL_FILE: plan.eval_rows}
    if plan.fresh is not None:
        files[FRESH_EVAL_FILE] = plan.fresh.rows
    texts = {name: jsonl_text(rows) for name, rows in files.items()}
    manifest = {
        "recipe": plan.config.recipe,
        "seed": plan.config.seed,
        CALL_FORMAT_KEY: plan.config.call_format,
        "sizes": {
            "requested": plan.train.requested,
            "built": plan.train.built,
            "eval": len(plan.eval_rows),
            "fresh_eval": len(plan.fresh.rows) if plan.fresh else None,
        },
        "options": {
            "class_sizes": plan.config.v3_sizes() if plan.config.recipe == "v3" else None,
            "fresh_eval": plan.config.fresh_eval,
            "require_frozen_eval": plan.config.require_frozen_eval,
        },
        "sources": [info.to_json() for info in plan.sources],
        "frozen_eval": {"file": "data/frozen_eval.json", "sha256": file_sha256(FROZEN_EVAL_FILE)},
        "files": {
            name: {"rows": len(files[name]), "sha256": sha256_text(text)}
            for name, text in texts.items()
        },
    }
    with atomic_directory(out, BUILD_WRITER, force=force) as staging:
        for name, text in texts.items():
            atomic_write_text(staging / name, text)
        atomic_write_json(staging / AUDIT_FILE, plan.audit)
        atomic_write_json(staging / MANIFEST_FILE, manifest)


def build_dataset(config: BuildConfig) -> tuple[Path, Plan]:
    """Build and write a dataset; returns the output directory and the plan (audit, warnings)."""
    out = config.out_dir()
    # Fail before the (possibly long) pass over the source, not after it.
    check_replaceable(out, BUILD_WRITER, config.force)
    try:
        plan = plan_build(config)
    except NoUsableRowsError as exc:
        audit_path = out.with_name(f"{out.name}.audit.json")
        atomic_write_json(audit_path, exc.audit)
        raise NoUsableRowsError(
            f"{exc}\nnothing was written to {out}; the skipped rows' line numbers are in "
            f"{audit_path}",
            exc.audit,
        ) from None
    write_plan(plan, out, force=config.force)
    return out, plan
