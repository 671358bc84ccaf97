"""The trainer's own LoRA step, for benchmarks that build their model themselves.

Kept out of benchmarks/common.py so that the benchmarks that train nothing (and their child
processes, whose peak memory is measured) do not import MLX and the trainer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import mlx.core as mx

from mlx_plamo3.lora import apply_lora
from train.layers import prepare_for_training
from train.step import accumulate_passes, make_optimizer, step_functions


@dataclass
class LoraTraining:
    """The trainer's pieces on a model: LoRA, keyed dropout, AdamW and the step functions."""

    model: Any
    optimizer: Any
    keys: Any  # train.layers.ForwardKeys
    loss_and_grad: Callable[..., Any]
    apply_update: Callable[[Any], None]

    def step(self, batches: Sequence[Any], seed: int, step_index: int) -> Any:
        """One optimizer step over a step's passes, as `Trainer.run_step` computes it; the loss."""
        loss, grads = accumulate_passes(self.loss_and_grad, batches, seed, step_index)
        self.apply_update(grads)
        mx.eval(self.model.trainable_parameters(), self.optimizer.state)
        return loss


def lora_training(model: Any, cfg: Any, total_steps: int) -> LoraTraining:
    """LoRA from `cfg` (initialized from cfg.seed, as the trainer does) on `model`, in train mode,
    with the trainer's optimizer and step functions for `total_steps` steps."""
    mx.random.seed(cfg.seed)
    apply_lora(model, cfg.lora_config())
    keys = prepare_for_training(model, cfg.lora_dropout)
    model.train()
    optimizer = make_optimizer(cfg, total_steps)
    optimizer.init(model.trainable_parameters())
    return LoraTraining(model, optimizer, keys, *step_functions(model, optimizer, keys, cfg))
