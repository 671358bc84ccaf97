"""Data-parallel training on MLX's distributed engine: the ranks `mlx.launch` starts.

`mlx.launch --hosts ... -- mlx-plamo train ...` (or `-n 2` on one host) starts one trainer per
rank; `mx.distributed.init()` joins them (a lone process is a group of one and nothing changes).
Every rank builds the same seeded step plan; rank r trains on the examples `r, r + size, ...` of
each step, weighted as shares of the whole step (`train.batches.micro_batches(step_examples=)`),
so the sum over ranks of the losses and gradients (`Ranks.sum`, an all-reduce) is exactly the
single-process step. Each rank's memory plan covers the passes of its own shares. Every rank
then applies the same update to the same LoRA state, so the states stay identical without being
sent. Only rank 0 writes: the adapter folder, checkpoints, checkpoint evals and MLflow.

A rank that fails stops the run: `mlx.launch` ends the other ranks, and a rank that reaches an
all-reduce first fails there (`RanksLostError`); the last checkpoint rank 0 wrote stays the last
good one. The communication per step is one all-reduce of the step loss, the LoRA gradients and
four counts (tokens, supervised tokens, padding, passes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import mlx.core as mx
from mlx.utils import tree_map

from mlx_plamo3.errors import PlamoError

T = TypeVar("T")


class RanksLostError(PlamoError, RuntimeError):
    """Another rank of a distributed run stopped, so this one cannot go on."""


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: `rank` of `size`, and the group to reduce over."""

    rank: int = 0
    size: int = 1
    group: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's part of one step's items: every `size`-th, starting at `rank`."""
        return list(items[self.rank :: self.size])

    def sum(self, tree: Any) -> Any:
        """The sum over ranks of every array in `tree` (the tree itself when alone)."""
        if self.size == 1:
            return tree
        try:
            summed = tree_map(lambda a: mx.distributed.all_sum(a, group=self.group), tree)
            mx.eval(summed)
        except RuntimeError as exc:
            raise RanksLostError(
                f"rank {self.rank} of {self.size}: another rank stopped ({exc}); the run stops "
                "here, the last checkpoint rank 0 saved is the last good one"
            ) from None
        return summed


def join() -> Ranks:
    """This process's ranks: those `mlx.launch` set up, else a group of one."""
    group = mx.distributed.init()
    if group.size() == 1:
        return Ranks()
    return Ranks(group.rank(), group.size(), group)
