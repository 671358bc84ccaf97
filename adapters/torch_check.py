"""`mlx-plamo check-torch`: rerun the eval in PyTorch + PEFT and compare with the MLX records.

The user's proof that the port is right: the exported PEFT adapter, loaded by
`peft.PeftModel.from_pretrained` on a PyTorch PLaMo 3 (the project's independent reference, or
the checkpoint's own code with --trust-remote-code), must produce the MLX eval's predictions.
Prompts are built exactly as the MLX harness builds them (`prompt_messages` + the chat
template), decoding is greedy with the same stop tokens and token budget, one prompt at a time.

`run_check` refuses mismatched inputs before loading anything heavy (records of a base
condition or without token ids, an adapter of another shape or base, a PEFT adapter that is not
the records' MLX adapter's export), then compares question by question and returns the report
(a JSON-able dict); `format_report` is its text. For every disagreement the report gives the
first differing token and PyTorch's logit margin there: a near-tie (say under 0.1 in bf16) is
rounding, not a port bug; a large margin is a bug.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from adapters.check_inputs import (
    check_records_have_adapter,
    check_records_unconstrained,
    match_eval_rows,
    recorded_decoding,
    recorded_max_new_tokens,
    token_ids_of,
)
from adapters.divergence import DEFAULT_TIE_MARGIN, compare_row, strip_stop
from adapters.torch_side import check_device, greedy_tokens, load_torch_base, torch_dtype
from data import load_eval_rows
from eval.harness import cut_at_turn_end, prompt_messages
from eval.records import Records, load_records
from eval.scoring import MODES, RATE_KEYS, describe_rate, summarize
from mlx_plamo3.errors import InputError
from mlx_plamo3.generate import stop_token_ids
from mlx_plamo3.io import FileFormatError, check_file_replaceable, read_json
from mlx_plamo3.loading import read_model_args, resolve_model_path
from mlx_plamo3.lora import (
    ADAPTER_CONFIG,
    BASE_WEIGHTS_KEY,
    check_same_base,
    checkpoint_weights_fingerprint,
)
from mlx_plamo3.messages import print_warning
from mlx_plamo3.peft import (
    PeftAdapter,
    check_peft_fits_base,
    check_peft_matches_mlx,
    read_peft_adapter,
)
from mlx_plamo3.tokenizer import Plamo3Tokenizer

# Keys every report of `run_check` has: how an earlier report is told from another file.
REPORT_KEYS = frozenset({"results", "compared_by", "agree", "rows"})
MODEL_CODE_NAMES = {
    "reference": "the project's PyTorch reference",
    "remote code": "the checkpoint's own code",
}


# ---- the check ------------------------------------------------------------------------------


@dataclass
class CheckSetup:
    base: str
    adapter: Path
    results: Path
    data: str = "v2"
    device: str = "cpu"
    dtype: str = "float32"
    trust_remote_code: bool = False
    mlx_adapter: Path | None = None
    fewshot: bool | None = None
    tie_margin: float = DEFAULT_TIE_MARGIN
    limit: int | None = None
    allow_other_base: bool = False


def resolve_mlx_adapter(setup: CheckSetup, records: Records) -> tuple[Path | None, str | None]:
    """The MLX adapter the records came from (--mlx-adapter, else the records' summary), or
    None and the reason the identity check cannot run."""
    if setup.mlx_adapter is not None:
        return setup.mlx_adapter, None
    recorded = records.summary.get("adapter")
    if not isinstance(recorded, str):
        return None, (
            f"{records.path} does not name its MLX adapter; pass --mlx-adapter to check that "
            f"{setup.adapter} is its export"
        )
    if not (Path(recorded) / ADAPTER_CONFIG).is_file():
        return None, (
            f"the records' adapter {recorded} is not an adapter directory here; pass "
            f"--mlx-adapter to check that {setup.adapter} is its export"
        )
    return Path(recorded), None


def check_bases(
    setup: CheckSetup, records: Records, adapter: PeftAdapter, base_dir: Path
) -> list[str]:
    """Refuse (or, with allow_other_base, return as warnings) an adapter or records made on
    another base of the same shape than `base_dir`, by base weights fingerprint."""
    warnings: list[str] = []
    on_other_base = warnings.append if setup.allow_other_base else None
    actual = checkpoint_weights_fingerprint(base_dir)
    subjects = (
        ((adapter.info or {}).get(BASE_WEIGHTS_KEY), f"the adapter {setup.adapter}"),
        (records.summary.get(BASE_WEIGHTS_KEY), f"the records {records.path}"),
    )
    for recorded, subject in subjects:
        check_same_base(recorded, actual, subject, f"--base {setup.base}", on_other_base)
    return warnings


def side_by_side(mlx_rows: Sequence[Mapping], torch_rows: Sequence[Mapping]) -> dict[str, Any]:
    return {
        mode: {
            "mlx": summarize(mlx_rows, mode, condition="mlx"),
            "torch": summarize(torch_rows, mode, condition="torch"),
        }
        for mode in MODES
    }


def run_check(setup: CheckSetup, progress: bool = True) -> dict[str, Any]:
    """Run the eval cases in PyTorch + PEFT and compare with the MLX records: the report."""
    from peft import PeftModel
    from tqdm import tqdm

    check_device(setup.device)
    torch_dtype(setup.dtype)
    records = load_records(setup.results)
    check_records_have_adapter(records)
    check_records_unconstrained(records)
    record_rows = records.rows[: setup.limit]
    if not record_rows:
        raise InputError(f"{records.path} holds no questions to compare")
    mlx_ids = token_ids_of(record_rows, records.path)
    eval_file, eval_rows = load_eval_rows(setup.data)
    eval_rows = match_eval_rows(record_rows, eval_rows, str(eval_file))
    base_dir = resolve_model_path(setup.base)
    args = read_model_args(base_dir)

    # Refuse a mismatched adapter, records or base before loading anything heavy.
    adapter = read_peft_adapter(setup.adapter)
    check_peft_fits_base(adapter, args, setup.base)
    notes = check_bases(setup, records, adapter, base_dir)
    mlx_adapter, skipped = resolve_mlx_adapter(setup, records)
    if mlx_adapter is not None:
        check_peft_matches_mlx(adapter, mlx_adapter)
    else:
        notes.append(f"identity check skipped: {skipped}")
    for note in notes:
        print_warning(note)

    tokenizer = Plamo3Tokenizer.from_pretrained(base_dir)
    stop_ids = stop_token_ids(tokenizer)
    max_new_tokens = recorded_max_new_tokens(records.summary)
    fewshot = setup.fewshot
    if fewshot is None:  # as the records' eval prompted (records before the flag: by condition)
        recorded = recorded_decoding(records.summary, "fewshot")
        fewshot = recorded if isinstance(recorded, bool) else records.condition == "base-fewshot"

    started = time.perf_counter()
    base = load_torch_base(setup.base, base_dir, setup.dtype, setup.device, setup.trust_remote_code)
    with warnings.catch_warnings():
        # transformers' deprecation notices reached through peft: not the user's to act on.
        warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
        model = PeftModel.from_pretrained(base, str(setup.adapter)).to(setup.device).eval()
    load_seconds = time.perf_counter() - started

    started = time.perf_counter()
    rows, torch_records = [], []
    triples = list(zip(record_rows, mlx_ids, eval_rows, strict=True))
    for index, (record, record_ids, eval_row) in enumerate(
        tqdm(triples, desc="check-torch", unit="q", disable=not progress)
    ):
        prompt = tokenizer.apply_chat_template(
            prompt_messages(eval_row, fewshot), add_generation_prompt=True
        )
        torch_ids = greedy_tokens(
            model, prompt, max_new_tokens, stop_ids, hf_generate=setup.trust_remote_code
        )
        pred = cut_at_turn_end(tokenizer.decode(strip_stop(torch_ids, stop_ids)))
        agree, divergence = compare_row(
            model, tokenizer, prompt, torch_ids, record_ids, stop_ids, setup.tie_margin
        )
        torch_records.append({**record, "pred": pred})
        rows.append(
            {
                "index": index,
                "kind": record["kind"],
                "question": record["question"],
                "agree": agree,
                "mlx_pred": record["pred"],
                "torch_pred": pred,
                "torch_ids": strip_stop(torch_ids, stop_ids),
                "divergence": None if divergence is None else asdict(divergence),
            }
        )
    agree = sum(r["agree"] for r in rows)
    return {
        "base": setup.base,
        "adapter": str(setup.adapter),
        "results": str(setup.results),
        "eval_file": str(eval_file),
        "mlx_adapter_checked": None if mlx_adapter is None else str(mlx_adapter),
        "model_code": "remote code" if setup.trust_remote_code else "reference",
        "device": setup.device,
        "dtype": setup.dtype,
        "fewshot": fewshot,
        "max_new_tokens": max_new_tokens,
        "compared_by": "token ids",
        "tie_margin": setup.tie_margin,
        "limit": setup.limit,
        "warnings": notes,
        "n": len(rows),
        "agree": agree,
        "agreement": agree / len(rows) if rows else None,
        "load_seconds": round(load_seconds, 2),
        "generate_seconds": round(time.perf_counter() - started, 2),
        "metrics": side_by_side(record_rows, torch_records),
        "rows": rows,
    }


# ---- output ---------------------------------------------------------------------------------


def check_report_replaceable(out: Path, results: Path) -> None:
    """Refuse a report path that is the records file being checked, a directory, or an existing
    file other than an earlier check-torch report (which is replaced)."""
    if out.resolve() == results.resolve():
        raise InputError(f"--out {out} is the --results file: the report would replace its records")
    check_file_replaceable(out, is_check_report, "a check-torch report")


def is_check_report(path: Path) -> bool:
    try:
        earlier = read_json(path)
    except (FileFormatError, OSError):
        return False
    return isinstance(earlier, dict) and REPORT_KEYS <= earlier.keys()


def format_report(report: Mapping[str, Any], min_agreement: int) -> str:
    """The report as text: agreement, both sides' scores, and each disagreement's first
    differing token with PyTorch's margin and its verdict (near-tie or large)."""
    n, agree = report["n"], report["agree"]
    lines = [
        f"PyTorch ({MODEL_CODE_NAMES[report['model_code']]} + PEFT, {report['device']}, "
        f"{report['dtype']}) vs MLX records {report['results']}",
        f"agreement: {agree}/{n} questions identical (compared by {report['compared_by']}; "
        f"required {min_agreement}"
        + (f"; --limit {report['limit']}" if report.get("limit") else "")
        + ")",
        *(f"warning: {w}" for w in report.get("warnings", [])),
        "",
    ]
    other_base = any("different base" in w for w in report.get("warnings", []))
    large = (
        "LARGE margin: the other base (see the warning), or a port bug"
        if other_base
        else "LARGE margin: look for a port bug"
    )
    for mode in MODES:
        mlx, torch_ = report["metrics"][mode]["mlx"], report["metrics"][mode]["torch"]
        lines.append(f"{mode} scoring:")
        lines.append(f"  {'metric':<18}{'MLX':<38}PyTorch")
        for key in RATE_KEYS:
            cells = []
            for summary in (mlx, torch_):
                k, total = summary["counts"][key]
                cells.append(describe_rate(k, total) if total else "-")
            lines.append(f"  {key:<18}{cells[0]:<38}{cells[1]}")
        lines.append("")
    disagreements = [r for r in report["rows"] if not r["agree"]]
    if disagreements:
        lines.append("disagreements (first differing token; PyTorch logit margin there):")
    for row in disagreements:
        d = row["divergence"]
        margin = (
            f"logit(torch) - logit(mlx) = {d['torch_minus_mlx_logit']:.4f}"
            if d["torch_minus_mlx_logit"] is not None
            else f"top1 - top2 = {d['top1_top2_margin']:.4f}"
        )
        verdict = "near-tie (rounding)" if d["near_tie"] else large
        lines += [
            f"  #{row['index']} [{row['kind']}] {row['question'][:70]!r}",
            f"    token {d['index']}: torch {d['torch_piece']!r} ({d['torch_token']}) vs mlx "
            f"{d['mlx_piece']!r} ({d['mlx_token']}, from {d['mlx_token_source']}); "
            f"{margin}; {verdict}",
            f"    mlx:   {row['mlx_pred'][:100]!r}",
            f"    torch: {row['torch_pred'][:100]!r}",
        ]
    return "\n".join(lines)
