"""`mlx-plamo check-torch`: rerun the eval in PyTorch + PEFT and compare with the MLX records.

The user's proof that the port is right: the exported PEFT adapter, loaded by
`peft.PeftModel.from_pretrained` on a PyTorch PLaMo 3 (the project's independent reference, or
the checkpoint's own code with --trust-remote-code), must produce the MLX eval's predictions.
Prompts are built exactly as the MLX harness builds them (`prompt_messages` + the chat
template), decoding is greedy with the same stop tokens and token budget, one prompt at a time.

For every disagreement the report gives the first differing token and PyTorch's logit margin
there: a near-tie (say under 0.1 in bf16) is rounding, not a port bug; a large margin is a bug.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click

from adapters.peft import (
    PeftAdapter,
    check_peft_fits_base,
    check_peft_matches_mlx,
    read_peft_adapter,
)
from data import load_rows, resolve_dataset
from eval.harness import cut_at_turn_end, prompt_messages, question_of
from eval.records import Records, load_records
from eval.scoring import MODES, RATE_KEYS, describe_rate, summarize
from mlx_plamo3.errors import USER_ERRORS, PlamoError
from mlx_plamo3.generate import stop_token_ids
from mlx_plamo3.io import atomic_write_json
from mlx_plamo3.loading import read_config, resolve_model_path
from mlx_plamo3.lora import (
    ADAPTER_CONFIG,
    BASE_WEIGHTS_KEY,
    check_same_base,
    checkpoint_weights_fingerprint,
)
from mlx_plamo3.messages import next_step, print_warning, quoted
from mlx_plamo3.model import ModelArgs
from mlx_plamo3.tokenizer import Plamo3Tokenizer

DEVICES = ("cpu", "cuda", "mps")
TORCH_DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_MAX_NEW_TOKENS = 160
DEFAULT_TIE_MARGIN = 0.1
MODEL_CODE_NAMES = {
    "reference": "the project's PyTorch reference",
    "remote code": "the checkpoint's own code",
}


class CheckError(PlamoError, ValueError):
    """The check cannot run: inputs that do not belong together or cannot be read."""


# ---- matching records to eval rows ----------------------------------------------------------


def match_eval_rows(
    records: Sequence[Mapping[str, Any]], eval_rows: Sequence[dict[str, Any]], source: str
) -> list[dict[str, Any]]:
    """The eval row of each record, matched by question; an error names every record question
    the eval rows lack (records do not carry the full prompt, the eval rows do)."""
    by_question: dict[str, dict[str, Any]] = {}
    for row in eval_rows:
        question = question_of(row)
        if question in by_question and by_question[question]["messages"] != row["messages"]:
            raise CheckError(f"{source}: the question {question!r} appears with two prompts")
        by_question[question] = row
    missing_field = [i for i, r in enumerate(records) if not isinstance(r.get("question"), str)]
    if missing_field:
        raise CheckError(f"records rows {missing_field[:8]} have no 'question' to match on")
    missing = [r["question"] for r in records if r["question"] not in by_question]
    if missing:
        shown = "; ".join(repr(q) for q in missing[:5])
        raise CheckError(
            f"{len(missing)} record question(s) are not in {source}: {shown}"
            + (" ..." if len(missing) > 5 else "")
        )
    return [by_question[r["question"]] for r in records]


def decoding_of(summary: Mapping[str, Any]) -> int:
    """max_new_tokens the MLX eval used (from its summary), else the seed's 160."""
    decoding = summary.get("decoding")
    if isinstance(decoding, Mapping) and isinstance(decoding.get("max_new_tokens"), int):
        return decoding["max_new_tokens"]
    return DEFAULT_MAX_NEW_TOKENS


# ---- comparing one prediction ---------------------------------------------------------------


def strip_stop(ids: Sequence[int], stop_ids: set[int]) -> list[int]:
    """Generated ids without the final stop token (the MLX generator never returns it)."""
    ids = list(ids)
    return ids[:-1] if ids and ids[-1] in stop_ids else ids


def first_difference_ids(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first differing token (a length difference counts), None if equal."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def first_difference_text(
    decode: Callable[[list[int]], str], ids: Sequence[int], text: str
) -> int | None:
    """Index of the first token of `ids` whose decoded prefix stops being a prefix of `text`
    (len(ids) when `text` goes on after all of them); None if they decode to `text`.

    A trailing U+FFFD is a UTF-8 character split across tokens, not yet a difference."""
    ids = list(ids)
    for k in range(len(ids)):
        prefix = cut_at_turn_end(decode(ids[: k + 1])).rstrip("\ufffd")
        if not text.startswith(prefix):
            return k
    return None if cut_at_turn_end(decode(ids)) == text else len(ids)


@dataclass
class Divergence:
    """Where PyTorch and MLX part: the first differing generated token and PyTorch's logits."""

    index: int
    torch_token: int | None
    torch_piece: str | None
    mlx_token: int | None
    mlx_piece: str | None
    # "ids": from the records; "text": the token consistent with the MLX text that PyTorch
    # scores highest (the records carry text only), so the margin is a lower bound.
    mlx_token_source: str
    top1_top2_margin: float
    torch_minus_mlx_logit: float | None
    near_tie: bool


def logit_margins(
    logits: Any, torch_token: int | None, mlx_token: int | None
) -> tuple[float, float | None]:
    """(top1 - top2, logit[torch token] - logit[mlx token] or None) from a logits vector."""
    import torch

    values = logits.float()
    top = torch.topk(values, 2).values
    top_gap = float(top[0] - top[1])
    if torch_token is None or mlx_token is None:
        return top_gap, None
    return top_gap, float(values[torch_token] - values[mlx_token])


# ---- the PyTorch side -----------------------------------------------------------------------


def torch_dtype(name: str) -> Any:
    import torch

    if name not in TORCH_DTYPES:
        raise CheckError(f"unknown dtype {name!r}; choose one of {TORCH_DTYPES}")
    return getattr(torch, name)


def check_device(device: str) -> None:
    import torch

    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
    }
    if device not in available:
        raise CheckError(f"unknown device {device!r}; choose one of {DEVICES}")
    if not available[device]:
        raise CheckError(f"--device {device} is not available on this machine")


def load_torch_base(
    base: str, base_dir: Path, dtype: str, device: str, trust_remote_code: bool
) -> Any:
    """The base model in PyTorch: the checkpoint's own code only when the user allowed it,
    else the project's independent reference implementation."""
    if trust_remote_code:
        from transformers import AutoModelForCausalLM

        # A Hub id goes to transformers as is, so it fetches the modeling code with the weights
        # (the project's resolver downloads weights and tokenizer files only).
        source = str(base_dir) if Path(base).exists() else base
        model = AutoModelForCausalLM.from_pretrained(
            source, trust_remote_code=True, dtype=torch_dtype(dtype), use_safetensors=True
        )
        return model.to(device).eval()
    from mlx_plamo3.torch_reference import load_reference

    return load_reference(base_dir, dtype=torch_dtype(dtype), device=device)


def greedy_tokens(
    model: Any, prompt: list[int], max_new_tokens: int, stop_ids: set[int], hf_generate: bool
) -> list[int]:
    """Greedy new tokens, a produced stop token included as the last one."""
    import torch

    if not hf_generate:
        from mlx_plamo3.torch_reference import greedy_generate

        return greedy_generate(model, prompt, max_new_tokens, stop_ids)
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor([prompt], device=device),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long, device=device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=sorted(stop_ids),
            pad_token_id=min(stop_ids),
        )
    return [int(t) for t in out[0, len(prompt) :]]


def next_token_logits(model: Any, ids: list[int]) -> Any:
    """Logits for the token after `ids`, from one full forward pass (no cache)."""
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids], device=device)).logits[0, -1]


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


def check_records_have_adapter(records: Records) -> None:
    """Records of a base condition cannot agree with a base + adapter: refuse them."""
    summary = records.summary
    if "adapter" in summary and not summary["adapter"]:
        raise CheckError(
            f"{records.path} has no adapter (condition {records.condition}): check-torch "
            "reruns an adapter's eval; pass the records of `mlx-plamo eval --adapter ...`"
        )


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


def consistent_tokens(
    texts: Sequence[str], remainder: str, byte_ids: Mapping[int, int]
) -> list[int]:
    """Tokens MLX may have produced where the rest of its text is `remainder`: those whose text
    is a prefix of it, and the byte token of its first UTF-8 byte (byte fallback). A lone
    high byte decodes to U+FFFD, so an invalid sequence in the MLX text is covered too."""
    found = [i for i, text in enumerate(texts) if text and remainder.startswith(text)]
    if remainder and remainder[0] != "\ufffd":
        first_byte = remainder.encode("utf-8")[0]
        if first_byte in byte_ids and byte_ids[first_byte] not in found:
            found.append(byte_ids[first_byte])
    return found


class TokenTexts:
    """Each token's text and the byte-fallback tokens, built once, when first needed."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._texts: list[str] | None = None
        self._bytes: dict[int, int] = {}

    def texts(self) -> list[str]:
        if self._texts is None:
            self._texts = [self.tokenizer.decode([i]) for i in range(len(self.tokenizer))]
            for i in range(len(self.tokenizer)):
                name = self.tokenizer.convert_ids_to_tokens(i)
                if len(name) == 6 and name.startswith("<0x") and name.endswith(">"):
                    self._bytes[int(name[3:5], 16)] = i
        return self._texts

    def byte_ids(self) -> dict[int, int]:
        self.texts()
        return self._bytes


def compare_row(
    model: Any,
    tokenizer: Any,
    prompt: list[int],
    torch_ids: list[int],
    record: Mapping[str, Any],
    stop_ids: set[int],
    tie_margin: float,
    token_texts: TokenTexts | None = None,
) -> tuple[bool, Divergence | None]:
    """Agreement of one question, and where it diverges when it does.

    Without token ids in the records, MLX's token at the divergence is not known exactly; it is
    taken as the token consistent with the MLX text that PyTorch scores highest, so the reported
    margin is the smallest one that could explain MLX's choice (a lower bound)."""
    content = strip_stop(torch_ids, stop_ids)
    mlx_ids = record.get("pred_ids")
    if isinstance(mlx_ids, list):
        index = first_difference_ids(content, mlx_ids)
    else:
        index = first_difference_text(tokenizer.decode, content, record["pred"])
    if index is None:
        return True, None
    torch_token = torch_ids[index] if index < len(torch_ids) else None
    logits = next_token_logits(model, prompt + content[:index])
    if isinstance(mlx_ids, list):
        mlx_token = mlx_ids[index] if index < len(mlx_ids) else min(stop_ids)
        source = "ids"
    else:
        done = cut_at_turn_end(tokenizer.decode(content[:index])).rstrip("\ufffd")
        rest = record["pred"][len(done) :]
        if rest:
            token_texts = token_texts or TokenTexts(tokenizer)
            candidates = consistent_tokens(token_texts.texts(), rest, token_texts.byte_ids())
        else:
            candidates = sorted(stop_ids)  # nothing left of the MLX text: MLX stopped here
        candidates = [c for c in candidates if c != torch_token] or candidates
        mlx_token = max(candidates, key=lambda c: float(logits[c])) if candidates else None
        source = "text"
    top_gap, pair_gap = logit_margins(logits, torch_token, mlx_token)
    deciding = pair_gap if pair_gap is not None else top_gap
    return False, Divergence(
        index=index,
        torch_token=torch_token,
        torch_piece=piece(tokenizer, torch_token),
        mlx_token=mlx_token,
        mlx_piece=piece(tokenizer, mlx_token),
        mlx_token_source=source,
        top1_top2_margin=round(top_gap, 6),
        torch_minus_mlx_logit=None if pair_gap is None else round(pair_gap, 6),
        near_tie=abs(deciding) <= tie_margin,
    )


def piece(tokenizer: Any, token: int | None) -> str | None:
    return None if token is None else tokenizer.convert_ids_to_tokens(token)


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
    record_rows = records.rows[: setup.limit]
    eval_file = resolve_dataset(setup.data) / "eval.jsonl"
    eval_rows = match_eval_rows(record_rows, load_rows(eval_file), str(eval_file))
    base_dir = resolve_model_path(setup.base)
    args = ModelArgs.from_dict(read_config(base_dir), source=str(base_dir / "config.json"))

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
    max_new_tokens = decoding_of(records.summary)
    fewshot = setup.fewshot
    if fewshot is None:
        fewshot = records.summary.get("condition") == "base-fewshot"

    started = time.perf_counter()
    base = load_torch_base(setup.base, base_dir, setup.dtype, setup.device, setup.trust_remote_code)
    with warnings.catch_warnings():
        # transformers' deprecation notices reached through peft: not the user's to act on.
        warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
        model = PeftModel.from_pretrained(base, str(setup.adapter)).to(setup.device).eval()
    load_seconds = time.perf_counter() - started

    started = time.perf_counter()
    rows, torch_records = [], []
    token_texts = TokenTexts(tokenizer)
    pairs = list(zip(record_rows, eval_rows, strict=True))
    for index, (record, eval_row) in enumerate(
        tqdm(pairs, desc="check-torch", unit="q", disable=not progress)
    ):
        prompt = tokenizer.apply_chat_template(
            prompt_messages(eval_row, fewshot), add_generation_prompt=True
        )
        torch_ids = greedy_tokens(
            model, prompt, max_new_tokens, stop_ids, hf_generate=setup.trust_remote_code
        )
        pred = cut_at_turn_end(tokenizer.decode(strip_stop(torch_ids, stop_ids)))
        agree, divergence = compare_row(
            model, tokenizer, prompt, torch_ids, record, stop_ids, setup.tie_margin, token_texts
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
        "compared_by": "token ids"
        if all(isinstance(r.get("pred_ids"), list) for r in record_rows)
        else "text (the records carry no token ids)",
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


def format_report(report: Mapping[str, Any], min_agreement: int) -> str:
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


def default_report_path(results: Path) -> Path:
    return results.with_name(f"{results.stem}.torch-check.json")


@click.command(name="check-torch", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--base",
    required=True,
    help="Base model: a Hugging Face checkpoint directory or a Hub id (org/name).",
)
@click.option(
    "--adapter",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="PEFT adapter directory (from `mlx-plamo export`).",
)
@click.option(
    "--results",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="MLX eval records file (from `mlx-plamo eval`) to compare with.",
)
@click.option(
    "--data",
    default="v2",
    show_default=True,
    help="Dataset recipe name or directory whose eval.jsonl holds the records' prompts.",
)
@click.option(
    "--device",
    type=click.Choice(DEVICES),
    default="cpu",
    show_default=True,
    help="PyTorch device.",
)
@click.option(
    "--dtype",
    type=click.Choice(TORCH_DTYPES),
    default="float32",
    show_default=True,
    help="PyTorch dtype of the base weights (bf16 disagreements are often near-ties).",
)
@click.option(
    "--trust-remote-code",
    is_flag=True,
    help="Run the checkpoint's own modeling code (transformers AutoModel) instead of the "
    "project's PyTorch reference. Only for checkpoints you trust: it executes their code.",
)
@click.option(
    "--mlx-adapter",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="MLX adapter the records were made with, to confirm the PEFT adapter is its export "
    "[the records' summary 'adapter', if it exists].",
)
@click.option(
    "--fewshot/--no-fewshot",
    default=None,
    help="Insert the seed's 2-shot turns [only for base-fewshot records].",
)
@click.option(
    "--min-agreement",
    type=click.IntRange(min=0),
    help="Fail (exit 1) when fewer questions agree [all of them].",
)
@click.option(
    "--tie-margin",
    type=float,
    default=DEFAULT_TIE_MARGIN,
    show_default=True,
    help="A disagreement whose logit margin is at most this is reported as a near-tie.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    help="Compare only the first N questions of the records (a quick check) [all].",
)
@click.option(
    "--allow-other-base",
    is_flag=True,
    help="Compare even when the adapter or the records were made on another base of the same "
    "shape than --base, with a warning (refused by default: their base weights fingerprint "
    "differs, so disagreements would say nothing about the port).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="JSON report [<results>.torch-check.json beside the results file].",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def check_torch_command(
    base: str,
    adapter: Path,
    results: Path,
    data: str,
    device: str,
    dtype: str,
    trust_remote_code: bool,
    mlx_adapter: Path | None,
    fewshot: bool | None,
    min_agreement: int | None,
    tie_margin: float,
    limit: int | None,
    allow_other_base: bool,
    out: Path | None,
    quiet: bool,
) -> None:
    """Rerun the MLX eval in PyTorch with the PEFT adapter and compare, question by question.

    Exits 1 when fewer than --min-agreement questions produce identical outputs."""

    setup = CheckSetup(
        base=base,
        adapter=adapter,
        results=results,
        data=data,
        device=device,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        mlx_adapter=mlx_adapter,
        fewshot=fewshot,
        tie_margin=tie_margin,
        limit=limit,
        allow_other_base=allow_other_base,
    )
    try:
        report = run_check(setup, progress=not quiet)
    except USER_ERRORS as exc:
        raise click.ClickException(str(exc)) from None
    required = report["n"] if min_agreement is None else min_agreement
    report["min_agreement"] = required
    report["passed"] = report["agree"] >= required
    out = out or default_report_path(results)
    atomic_write_json(out, report)
    click.echo(format_report(report, required))
    click.echo(f"report written to {out}")
    if report["passed"] and report["mlx_adapter_checked"]:
        publish = f"mlx-plamo export --adapter {quoted(report['mlx_adapter_checked'])}"
        click.echo(next_step(f"{publish} --push-to-hub <user>/<name>  (publish it)"))
    if not report["passed"]:
        click.echo(
            f"check-torch FAILED: {report['agree']}/{report['n']} agree, {required} required",
            err=True,
        )
        raise SystemExit(1)
