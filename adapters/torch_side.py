"""The PyTorch side of `mlx-plamo check-torch`: the base model, its greedy tokens, its logits.

The base is the project's independent PyTorch reference (`mlx_plamo3.torch_reference`), or the
checkpoint's own modeling code through transformers only when the user passed
--trust-remote-code. Decoding is greedy, one prompt at a time, with the MLX eval's stop tokens
and token budget; the generated tokens end with the stop token when one was produced.

torch, transformers and the reference are imported inside the functions: they come with an
optional extra, and `check-torch --help` must not pay for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapters.check_inputs import CheckError
from mlx_plamo3.peft import EXPORT_DTYPES

DEVICES = ("cpu", "cuda", "mps")


def torch_dtype(name: str) -> Any:
    import torch

    if name not in EXPORT_DTYPES:
        raise CheckError(f"unknown dtype {name!r}; choose one of {EXPORT_DTYPES}")
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

    # Imported here: it imports torch, which an optional extra installs and `--help` skips.
    from mlx_plamo3.torch_reference import load_reference

    return load_reference(base_dir, dtype=torch_dtype(dtype), device=device)


def greedy_tokens(
    model: Any, prompt: list[int], max_new_tokens: int, stop_ids: set[int], hf_generate: bool
) -> list[int]:
    """Greedy new tokens, a produced stop token included as the last one."""
    import torch

    if not hf_generate:
        from mlx_plamo3.torch_reference import greedy_generate  # torch: see load_torch_base

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
