"""Scoring of tool-calling predictions: the study's rule, a strict mode, and Wilson intervals.

`study` mode reproduces the study's numbers exactly (GUIDE.md section 1). `strict` mode stops
counting schema echoes (`{"name", "description", "parameters"}`) and calls to unlisted tools as
calls, which the study's rule lets through.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from data.call_format import has_markup, parse_markup
from data.schema import ROW_KINDS
from eval.bfcl import is_bfcl_row
from eval.bfcl_checker import check_calls, parse_calls
from mlx_plamo3.errors import InputError

MODES: tuple[str, ...] = ("study", "strict")
# Earlier names of the modes, still accepted by the options (`--mode seed` = the study's rule).
MODE_ALIASES = {"seed": "study"}
MODE_CHOICES = (*MODES, *MODE_ALIASES)
# Rates in the order (and with the names) the study's summaries use.
RATE_KEYS: tuple[str, ...] = ("parse_rate", "func_name_acc", "args_exact_match", "false_call_rate")
SEED_SUMMARY_KEYS: tuple[str, ...] = (
    "condition",
    "n_call",
    "n_nocall",
    *RATE_KEYS,
    "minutes",
)


def parse_prediction(pred: str) -> Any | None:
    """The study's parse: JSON between the first `{` and the last `}`, else that span's head.

    The span is greedy and crosses lines. If it is not valid JSON, the part of it before the
    first blank line is tried, which rescues a call followed by more JSON (the base model often
    echoes several tool schemas separated by blank lines). "Blank line" means a literal "\\n\\n",
    as in the study's finetune/eval_tools.py: a line holding only spaces does not split. Anything
    else gives None. The result may be any JSON value; callers decide whether it is a call.
    A reply in PLaMo's tool-request markup gives what its json-format twin gives: one call's
    object (`data.call_format.parse_markup`), and None for several calls or broken markup (the
    span of the twin's JSON list, from its first `{` to its last `}`, is not JSON).
    """
    if has_markup(pred):
        calls = parse_markup(pred)
        return calls[0] if calls is not None and len(calls) == 1 else None
    start = pred.find("{")
    end = pred.rfind("}")
    if start < 0 or end < start:
        return None
    span = pred[start : end + 1]
    try:
        return json.loads(span)
    except (ValueError, RecursionError):  # RecursionError: pathologically nested output
        pass
    blank = span.find("\n\n")
    if blank < 0:
        return None
    try:
        return json.loads(span[:blank])
    except (ValueError, RecursionError):
        return None


def parse_gold(gold: str, where: str | None = None) -> dict[str, Any]:
    """A call row's gold: a JSON object with a string `name` and an object `arguments`.
    `where` (e.g. "row 3") prefixes the error message."""
    prefix = f"{where}: " if where else ""
    try:
        obj = json.loads(gold)
    except ValueError as exc:
        raise InputError(f"{prefix}gold of a call row is not valid JSON ({exc})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise InputError(f"{prefix}gold of a call row must be a JSON object with a string 'name'")
    if not isinstance(obj.get("arguments"), dict):
        raise InputError(f"{prefix}gold of a call row must have an object 'arguments'")
    return obj


def tool_names(tools: Iterable[Any]) -> frozenset[str]:
    """Names of the tools offered in a prompt: glaive style `{"name"}` or OpenAI style
    `{"type": "function", "function": {"name"}}`."""
    names: set[str] = set()
    for tool in tools:
        if not isinstance(tool, Mapping):
            continue
        inner = tool.get("function")
        source = inner if isinstance(inner, Mapping) else tool
        if isinstance(source.get("name"), str):
            names.add(source["name"])
    return frozenset(names)


def call_check(obj: Any, mode: str = "study", tools: frozenset[str] | None = None) -> str:
    """Whether a parsed prediction counts as a function call: "" if it does, else the reason.

    study: any dict with a `name` key. strict: also a string name, an `arguments` object, not a
    schema echo, and (when the prompt's tools are known) a name among those tools.
    """
    _check_mode(mode)
    if obj is None:
        return "no_parse"
    if not isinstance(obj, dict) or "name" not in obj:
        return "not_a_call"
    if mode == "study":
        return ""
    if not isinstance(obj["name"], str):
        return "name_not_string"
    if "arguments" not in obj:
        # The base model's typical output: the tool's schema copied back, not a call.
        if "description" in obj or "parameters" in obj:
            return "schema_echo"
        return "arguments_missing"
    if not isinstance(obj["arguments"], dict):
        return "arguments_not_object"
    if tools is not None and obj["name"] not in tools:
        return "unknown_tool"
    return ""


@dataclass(frozen=True)
class Verdict:
    """One row's outcome. Call-row fields are False on no-call rows and vice versa;
    `reason` says why a prediction was not counted as a call ("" when it was)."""

    kind: str
    parsed: bool
    func_name: bool
    args_exact: bool
    false_call: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def row_tools(row: Mapping[str, Any]) -> frozenset[str] | None:
    """The tool names a row's prompt offered, or None when the row does not record them."""
    tools = row.get("tools")
    return tool_names(tools) if isinstance(tools, list) else None


def score_row(row: Mapping[str, Any], mode: str = "study", index: int | None = None) -> Verdict:
    """Score one records row `{kind, gold, pred, [tools]}`."""
    where = "row" if index is None else f"row {index}"
    kind = row.get("kind")
    if kind not in ROW_KINDS:
        raise InputError(f"{where}: kind must be one of {ROW_KINDS}, got {kind!r}")
    if is_bfcl_row(row):
        return bfcl_row_verdict(row)
    obj = parse_prediction(row["pred"])
    reason = call_check(obj, mode, row_tools(row) if mode == "strict" else None)
    is_call = reason == ""
    if kind == "nocall":
        return Verdict(kind, False, False, False, is_call, reason)
    gold = parse_gold(row["gold"], where)
    func_name = is_call and obj["name"] == gold["name"]
    # Python == on parsed JSON, as the study did (so 1 == 1.0 and key order is ignored).
    args_exact = func_name and obj.get("arguments") == gold["arguments"]
    return Verdict(kind, is_call, func_name, args_exact, False, reason)


def bfcl_row_verdict(row: Mapping[str, Any]) -> Verdict:
    """A BFCL row in the frozen eval's terms, in either mode: parsed = one or more calls could
    be read (a JSON object or a list of them); func-name = the calls name exactly the gold's
    functions; args-exact = BFCL's own verdict (`eval.bfcl_checker`); a no-call row's false
    call = any call at all."""
    calls = parse_calls(row["pred"])
    if row["kind"] == "nocall":
        return Verdict("nocall", False, False, False, bool(calls), "" if calls else "no_call")
    verdict = check_calls(row["category"], row["functions"], row.get("ground_truth"), calls)
    gold_names = {name for answer in row.get("ground_truth") or [] for name in answer}
    func_name = bool(calls) and {call["name"] for call in calls} == gold_names
    reason = "" if verdict.correct else (verdict.failed_check or "incorrect")
    return Verdict("call", bool(calls), func_name, verdict.correct, False, reason)


def score_rows(rows: Sequence[Mapping[str, Any]], mode: str = "study") -> list[Verdict]:
    return [score_row(row, mode, index) for index, row in enumerate(rows)]


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (z=1.96: 95%).

    Unlike the normal approximation it stays inside [0, 1] and is not degenerate at k=0 or
    k=n, which is exactly where small evals like 40/40 land."""
    if n <= 0:
        raise ValueError(f"wilson_interval needs n > 0, got n={n}")
    if not 0 <= k <= n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # Clamp float noise at the ends (k=0 or k=n give exactly 0 or 1 analytically).
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def describe_rate(k: int, n: int) -> str:
    """A rate with its 95% Wilson interval, phrased honestly at the extremes: 40/40 is not
    "100%" but "40/40: 95% CI lower bound 91.2%"."""
    if n <= 0:
        return f"{k}/{n}: no cases"
    lo, hi = wilson_interval(k, n)
    if k == n:
        return f"{k}/{n}: 95% CI lower bound {lo:.1%}"
    if k == 0:
        return f"{k}/{n}: 95% CI upper bound {hi:.1%}"
    return f"{k}/{n} = {k / n:.1%} (95% CI {lo:.1%}–{hi:.1%})"


def rate_counts(verdicts: Sequence[Verdict]) -> dict[str, tuple[int, int]]:
    """(successes, cases) per rate: the call metrics over call rows, false calls over no-call."""
    calls = [v for v in verdicts if v.kind == "call"]
    nocalls = [v for v in verdicts if v.kind == "nocall"]
    return {
        "parse_rate": (sum(v.parsed for v in calls), len(calls)),
        "func_name_acc": (sum(v.func_name for v in calls), len(calls)),
        "args_exact_match": (sum(v.args_exact for v in calls), len(calls)),
        "false_call_rate": (sum(v.false_call for v in nocalls), len(nocalls)),
    }


def summarize(
    rows: Sequence[Mapping[str, Any]],
    mode: str = "study",
    *,
    condition: str | None = None,
    minutes: float | None = None,
) -> dict[str, Any]:
    """The study's summary keys plus `mode`, `counts` and 95% Wilson `intervals` per rate.

    Rates are k / n so that study mode gives the very floats the study stored (0.325, not
    0.32500000000000001 from some other route). A rate over zero cases is None.
    """
    _check_mode(mode)
    counts = rate_counts(score_rows(rows, mode))
    summary: dict[str, Any] = {
        "condition": condition,
        "n_call": counts["parse_rate"][1],
        "n_nocall": counts["false_call_rate"][1],
    }
    for key in RATE_KEYS:
        k, n = counts[key]
        summary[key] = k / n if n else None
    summary["minutes"] = minutes
    summary["mode"] = mode
    summary["counts"] = {key: list(counts[key]) for key in RATE_KEYS}
    summary["intervals"] = {
        key: list(wilson_interval(*counts[key])) if counts[key][1] else None for key in RATE_KEYS
    }
    if mode == "strict":
        # Tool membership is only checkable when every row recorded its prompt's tools.
        summary["strict_tool_check"] = bool(rows) and all(row_tools(r) is not None for r in rows)
    return summary


def summary_mismatches(
    stored: Mapping[str, Any], rescored: Mapping[str, Any]
) -> dict[str, tuple[Any, Any]]:
    """Counts and rates whose stored value differs from the rescored one:
    {key: (stored, rescored)}. Keys the stored summary lacks are not compared."""
    keys = [k for k in ("n_call", "n_nocall", *RATE_KEYS) if k in stored]
    return {k: (stored[k], rescored.get(k)) for k in keys if stored[k] != rescored.get(k)}


def canonical_mode(mode: str) -> str:
    """A scoring mode by its current name (an alias such as "seed" resolved)."""
    return MODE_ALIASES.get(mode, mode)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise InputError(f"unknown scoring mode {mode!r}; expected one of {MODES}")
