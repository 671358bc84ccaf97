"""One question of `mlx-plamo check-torch`: do PyTorch and MLX generate the same tokens, and
where they part, by how much PyTorch preferred its own token.

Both sides are compared by token ids (PyTorch's greedy tokens, the records' `pred_ids`; the
stop token is not part of either). At the first differing token PyTorch's logits are computed
again from the shared prefix: `logit(torch token) - logit(mlx token)` (or top1 - top2 when a
side has no token there) at most the tie margin is a near-tie, rounding rather than a port bug.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from adapters.torch_side import next_token_logits

DEFAULT_TIE_MARGIN = 0.1


@dataclass
class Divergence:
    """Where PyTorch and MLX part: the first differing generated token and PyTorch's logits."""

    index: int
    torch_token: int | None
    torch_piece: str | None
    mlx_token: int | None
    mlx_piece: str | None
    mlx_token_source: str  # "ids": the MLX token is the records' own `pred_ids`
    top1_top2_margin: float
    torch_minus_mlx_logit: float | None
    near_tie: bool


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


def piece(tokenizer: Any, token: int | None) -> str | None:
    return None if token is None else tokenizer.convert_ids_to_tokens(token)


def compare_row(
    model: Any,
    tokenizer: Any,
    prompt: list[int],
    torch_ids: list[int],
    mlx_ids: Sequence[int],
    stop_ids: set[int],
    tie_margin: float,
) -> tuple[bool, Divergence | None]:
    """Agreement of one question (PyTorch's `torch_ids`, a stop token possibly last, against
    the records' `mlx_ids`), and where it diverges when it does."""
    content = strip_stop(torch_ids, stop_ids)
    index = first_difference_ids(content, mlx_ids)
    if index is None:
        return True, None
    torch_token = torch_ids[index] if index < len(torch_ids) else None
    # MLX generated fewer tokens: it stopped there.
    mlx_token = mlx_ids[index] if index < len(mlx_ids) else min(stop_ids)
    logits = next_token_logits(model, prompt + content[:index])
    top_gap, pair_gap = logit_margins(logits, torch_token, mlx_token)
    deciding = pair_gap if pair_gap is not None else top_gap
    return False, Divergence(
        index=index,
        torch_token=torch_token,
        torch_piece=piece(tokenizer, torch_token),
        mlx_token=mlx_token,
        mlx_piece=piece(tokenizer, mlx_token),
        mlx_token_source="ids",
        top1_top2_margin=round(top_gap, 6),
        torch_minus_mlx_logit=None if pair_gap is None else round(pair_gap, 6),
        near_tie=abs(deciding) <= tie_margin,
    )
