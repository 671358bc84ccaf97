"""One optimizer step of the LoRA trainer: the optimizer, the loss-and-gradient of one forward
pass, the sum over a step's passes, and the clipped update.

The optimizer is AdamW with bias correction (torch's, as the study used) over a linear decay from
`learning_rate` to `lr_end_factor` of it, stepped once per update; `optimizer.learning_rate`
after an update is the rate that update applied. A pass's loss is `train.loss.weighted_loss`
(a weighted sum over its supervised tokens; summed over a step's passes it is the mean over
the step's examples of each example's mean token loss);
with gradient checkpointing the layers are recomputed one at a time in the backward
(`train.layers.recomputing_loss_and_grad`). Passes are evaluated one after another, so the graph
never spans two of them. Compiled when `compile` is set; the benchmarks measure these same
functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_map

from train.batches import MicroBatch
from train.config import TrainConfig
from train.layers import ForwardKeys, pass_key, recomputing_loss_and_grad
from train.loss import weighted_loss


def make_optimizer(config: TrainConfig, total_steps: int) -> optim.AdamW:
    schedule = optim.linear_schedule(
        config.learning_rate, config.learning_rate * config.lr_end_factor, max(1, total_steps)
    )
    # torch's AdamW (the study's) corrects the moments' bias; MLX's does only when asked.
    return optim.AdamW(
        learning_rate=schedule,
        betas=[config.adam_beta1, config.adam_beta2],
        eps=config.adam_eps,
        weight_decay=config.weight_decay,
        bias_correction=True,
    )


def step_functions(
    model: nn.Module, optimizer: optim.Optimizer, keys: ForwardKeys, cfg: TrainConfig
) -> tuple[Callable[..., Any], Callable[[Any], None]]:
    """One forward pass's (loss, gradients), and the optimizer update with clipping: compiled
    when cfg.compile (with gradient checkpointing, the layer-by-layer recomputation is not).
    The benchmarks measure these same two functions."""

    def pass_loss(inputs, targets, weights, positions, segments, valid, scored, key):
        keys.set(key)
        return weighted_loss(model, inputs, targets, weights, positions, segments, valid, scored)

    def apply_update(grads):
        if cfg.max_grad_norm > 0:
            grads, _ = optim.clip_grad_norm(grads, cfg.max_grad_norm)
        optimizer.update(model, grads)

    if cfg.grad_checkpoint:
        loss_and_grad = recomputing_loss_and_grad(model, keys)
    else:
        loss_and_grad = nn.value_and_grad(model, pass_loss)
    if cfg.compile:
        # Explicit state: the model's (value_and_grad swaps its parameters during the trace)
        # and the optimizer's (moments, step, scheduled learning rate).
        if not cfg.grad_checkpoint:
            loss_and_grad = mx.compile(loss_and_grad, inputs=model.state, outputs=model.state)
        both = [model.state, optimizer.state]
        apply_update = mx.compile(apply_update, inputs=both, outputs=both)
    return loss_and_grad, apply_update


def accumulate_passes(
    loss_and_grad: Callable[..., Any], batches: Sequence[MicroBatch], seed: int, step_index: int
) -> tuple[mx.array, dict[str, Any]]:
    """(step loss, step gradients): the sums over a step's forward passes, each pass evaluated
    before the next so the graph never spans two passes."""
    loss, grads = None, None
    for pass_index, batch in enumerate(batches):
        arrays = [mx.array(a) for a in batch.arrays()]
        pass_loss, pass_grads = loss_and_grad(*arrays, pass_key(seed, step_index, pass_index))
        if grads is None:
            loss, grads = pass_loss, pass_grads
        else:
            loss = loss + pass_loss
            grads = tree_map(mx.add, grads, pass_grads)
        mx.eval(loss, grads)
    return loss, grads


def global_norm(grads: dict[str, Any]) -> mx.array:
    return mx.sqrt(
        sum((g.astype(mx.float32).square().sum() for _, g in tree_flatten(grads)), mx.array(0.0))
    )
