"""`export_peft`: an MLX adapter as a PEFT adapter directory, with its model card and records.

The directory appears atomically (`mlx_plamo3.io.atomic_directory`, marked as written by
`mlx-plamo export`): adapter_model.safetensors, adapter_config.json and the provenance
(`mlx_plamo3.peft.write_peft_adapter`), README.md (`adapters.card`) and eval/<records>.json.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from adapters.card import model_card
from eval.records import RecordsError, load_records
from mlx_plamo3.io import atomic_directory, atomic_write_text
from mlx_plamo3.lora import AdapterError
from mlx_plamo3.messages import print_warning
from mlx_plamo3.peft import PEFT_CONFIG, write_peft_adapter

EXPORT_WRITER = "mlx-plamo export"  # names its output directories (mlx_plamo3.io)


def export_peft(
    adapter_dir: str | Path,
    out_dir: str | Path,
    dtype: str = "float32",
    base_model: str | None = None,
    revision: str | None = None,
    results: Sequence[str | Path] = (),
    force: bool = False,
    hub_repo: str | None = None,
) -> Path:
    """Export an MLX adapter as a PEFT adapter directory, atomically: adapter_model.safetensors,
    adapter_config.json, README.md (the model card), eval/<records>.json and the provenance.
    `hub_repo` is the repo id the card's loading snippet names (default: `out_dir`)."""
    try:
        records = [load_records(path) for path in results]
    except RecordsError as exc:
        raise AdapterError(str(exc)) from None
    this_adapter = str(Path(adapter_dir).resolve())
    for record in records:
        made_with = record.summary.get("adapter")
        if made_with is not None and made_with != this_adapter:
            print_warning(
                f"{record.path} was made with the adapter {made_with}, not {this_adapter}; the "
                "model card shows its numbers as they are"
            )
    names = [r.path.name for r in records]
    if len(set(names)) != len(names):
        raise AdapterError(f"two --results files share a file name: {names}")
    out_dir = Path(out_dir)
    with atomic_directory(out_dir, EXPORT_WRITER, force=force) as staging:
        info = write_peft_adapter(adapter_dir, staging, dtype, base_model, revision)
        peft_config = json.loads((staging / PEFT_CONFIG).read_text())
        for record in records:
            (staging / "eval").mkdir(exist_ok=True)
            shutil.copyfile(record.path, staging / "eval" / record.path.name)
        card = model_card(
            info["mlx_adapter_config"],
            peft_config,
            records,
            repo_or_dir=hub_repo or str(out_dir),
        )
        atomic_write_text(staging / "README.md", card)
    return out_dir
