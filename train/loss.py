"""The assistant-only loss and its normalisation.

The study's loop (finetune/train_lora.py, read on GitHub) ran one example per forward pass and
called `(out.loss / 8).backward()` with transformers' causal-LM loss, which is the mean
cross-entropy over the example's supervised tokens (labels != -100, after the shift). So its
update used the gradient of

    mean over the step's examples of (mean over that example's supervised tokens of CE),

each example weighing the same however long its answer. That is what the weights of
`train.batches` encode, and `weighted_loss` sums: 1 / (supervised tokens of the example x
examples in the step) on each supervised target. Summed over a step's forward passes it is the
step loss, independent of how the examples were packed or split.

Supervised tokens (differs from the study in one token): exactly each assistant turn's content
and its `<|plamo:tag|>` terminator. The study appended an extra eos after the template's render
and supervised it too; the chat template does not put eos there, so it is not trained here.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from train.batches import Example, MicroBatch


def token_cross_entropy(logits: mx.array, targets: mx.array) -> mx.array:
    """Cross-entropy of every position in float32 (bf16 logits lose too much in logsumexp)."""
    return nn.losses.cross_entropy(logits.astype(mx.float32), targets, reduction="none")


def forward_logits(
    model: nn.Module,
    inputs: mx.array,
    positions: mx.array,
    segments: mx.array,
    valid: mx.array,
) -> mx.array:
    """Logits of a packed pass: each example attends only to itself, positions from 0."""
    return model(inputs, attention_mask=valid, positions=positions, segment_ids=segments)


def weighted_loss(
    model: nn.Module,
    inputs: mx.array,
    targets: mx.array,
    weights: mx.array,
    positions: mx.array,
    segments: mx.array,
    valid: mx.array,
    scored: mx.array,
) -> mx.array:
    """This pass's share of the step loss: sum of weight x cross-entropy over the scored
    positions. The output head runs on those alone (about a tenth of a tool-calling example),
    never building the full [rows, length, vocab] logits."""
    hidden = model.hidden_states(
        inputs, attention_mask=valid, positions=positions, segment_ids=segments
    )
    return scored_loss(model, hidden, targets, weights, scored)


def scored_loss(
    model: nn.Module, hidden: mx.array, targets: mx.array, weights: mx.array, scored: mx.array
) -> mx.array:
    """The loss from the final normed hidden states [rows, length, hidden] of a pass."""
    hidden = hidden.reshape(-1, hidden.shape[-1])[scored]
    ce = token_cross_entropy(model.logits(hidden), targets.reshape(-1)[scored])
    return (ce * weights.reshape(-1)[scored]).sum()


def example_losses(model: nn.Module, batch: MicroBatch) -> dict[int, float]:
    """Mean supervised cross-entropy of each example of a packed pass, by train.jsonl row."""
    inputs, targets, _, positions, segments, valid, _ = (mx.array(a) for a in batch.arrays())
    logits = forward_logits(model, inputs, positions, segments, valid)
    ce = np.array(token_cross_entropy(logits, targets))
    supervised = batch.weights > 0
    out = {}
    for slot, row in enumerate(batch.examples):
        chosen = supervised & (batch.segments == slot)
        out[row] = float(ce[chosen].mean())
    return out


def unbatched_example_loss(model: nn.Module, example: Example) -> float:
    """The reference: one example alone, default positions, no packing, mean over its
    supervised targets (what the study's per-example `out.loss` was)."""
    ids = mx.array([example.ids], dtype=mx.int32)
    logits = model(ids[:, :-1])
    ce = token_cross_entropy(logits, ids[:, 1:])[0]
    supervised = mx.array(example.mask[1:])
    return float((ce * supervised).sum() / supervised.sum())
