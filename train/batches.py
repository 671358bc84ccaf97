"""From train rows to the arrays of each forward pass.

1. `encode_rows`: token ids and the assistant mask of every row (from token ids, by the
   tokenizer's `assistant_token_mask`); rows longer than `max_length` are dropped and counted,
   never truncated (truncation would cut the supervised call).
2. `plan_steps`: the seeded order of every optimizer step of the run, fixed up front, so a
   resumed run takes the same examples in the same steps.
3. `micro_batches`: a step's examples packed into rows (first-fit decreasing) with per-example
   segment ids and RoPE positions, rows of equal padded width grouped into forward passes under
   a token budget.
   `pass_shapes` gives the same passes' shapes without building them (for the memory plan).

Batching never changes which examples make up an update, only how they are computed: each
supervised target token carries the weight 1 / (its example's supervised tokens x the step's
examples), so summing `weight x cross-entropy` over all passes of a step gives the mean of the
per-example mean losses, whatever the packing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlx_plamo3.errors import InputError

PAD_SEGMENT = -1


@dataclass(frozen=True)
class Example:
    """One tokenized conversation; `row` is its 0-based line in train.jsonl."""

    row: int
    ids: tuple[int, ...]
    mask: tuple[bool, ...]

    @property
    def slots(self) -> int:
        """Input positions it occupies: every token but the last is an input."""
        return len(self.ids) - 1

    @property
    def n_supervised(self) -> int:
        """Supervised targets: tokens after the first whose mask is set."""
        return sum(self.mask[1:])


@dataclass
class Encoded:
    examples: list[Example]
    dropped_too_long: list[int]  # 0-based rows over max_length
    max_length: int

    @property
    def n_tokens(self) -> int:
        return sum(len(e.ids) for e in self.examples)


def encode_rows(rows: Sequence[dict[str, Any]], tokenizer: Any, max_length: int) -> Encoded:
    """Tokenize every row with its assistant mask; drop (and list) rows over `max_length`."""
    examples, dropped = [], []
    for row_index, row in enumerate(rows):
        ids, mask = tokenizer.assistant_token_mask(row["messages"])
        if len(ids) > max_length:
            dropped.append(row_index)
            continue
        example = Example(row_index, tuple(int(i) for i in ids), tuple(bool(m) for m in mask))
        if example.n_supervised == 0:
            raise InputError(f"train row {row_index + 1}: no assistant tokens to supervise")
        examples.append(example)
    return Encoded(examples, dropped, max_length)


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """Example order of one epoch: a permutation seeded by (seed, epoch), or file order."""
    if not shuffle:
        return list(range(n))
    # PCG64 from a seed sequence gives the same permutation on every platform and numpy 1.17+.
    return np.random.default_rng([seed, epoch]).permutation(n).tolist()


def plan_steps(
    n_examples: int, examples_per_step: int, epochs: int, seed: int, shuffle: bool = True
) -> list[list[int]]:
    """Example indices of every optimizer step of the run. An epoch's last step may be smaller
    (it is still taken, averaged over its own examples; the study's loop dropped it)."""
    if n_examples < 1:
        raise InputError("no training examples left (all rows dropped or the file is empty)")
    steps = []
    for epoch in range(epochs):
        order = epoch_order(n_examples, seed, epoch, shuffle)
        steps += [order[i : i + examples_per_step] for i in range(0, n_examples, examples_per_step)]
    return steps


def pack_first_fit(sizes: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of `sizes` grouped into bins of at most `capacity` (first-fit decreasing; an
    item larger than the capacity gets a bin of its own). Bins come out fullest first."""
    bins: list[list[int]] = []
    fill: list[int] = []
    for index in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        for b, used in enumerate(fill):
            if used + sizes[index] <= capacity:
                bins[b].append(index)
                fill[b] += sizes[index]
                break
        else:
            bins.append([index])
            fill.append(sizes[index])
    order = sorted(range(len(bins)), key=lambda b: (-fill[b], b))
    return [bins[b] for b in order]


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@dataclass
class MicroBatch:
    """Arrays [rows, length] of one forward pass; segment k is example `rows_of[k]`."""

    inputs: np.ndarray  # int32 token ids
    targets: np.ndarray  # int32 next-token ids (0 where unused)
    weights: np.ndarray  # float32 loss weights, 0 off the supervised targets
    positions: np.ndarray  # int32 RoPE positions, restarting at 0 for every example
    segments: np.ndarray  # int32 example slot within the pass, PAD_SEGMENT on padding
    valid: np.ndarray  # bool, False on padding
    examples: list[int]  # train.jsonl rows, by segment id
    # Flat indices (into rows x length) of the supervised targets, padded to few distinct
    # lengths with an unsupervised slot: the output head runs only there.
    scored: np.ndarray

    @property
    def n_tokens(self) -> int:
        return int(self.valid.sum())

    @property
    def n_supervised(self) -> int:
        return int((self.weights > 0).sum())

    @property
    def n_padding(self) -> int:
        return int(self.valid.size - self.valid.sum())

    def arrays(self) -> tuple[np.ndarray, ...]:
        return (
            self.inputs,
            self.targets,
            self.weights,
            self.positions,
            self.segments,
            self.valid,
            self.scored,
        )


def layout_rows(examples: Sequence[Example], pack_length: int, packing: bool) -> list[list[int]]:
    """Which examples share a row: packed first-fit decreasing, or one per row (longest first)."""
    sizes = [e.slots for e in examples]
    if packing:
        return pack_first_fit(sizes, pack_length)
    return [[i] for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))]


def group_rows(row_widths: Sequence[int], max_batch_tokens: int) -> list[list[int]]:
    """Consecutive rows (longest first) of the same padded width per forward pass, as many as
    fit the budget (a row alone may exceed it). Rows of different widths never share a pass:
    the shorter row's padding would cost every layer as much as real tokens."""
    groups: list[list[int]] = []
    for index, width in enumerate(row_widths):
        group = groups[-1] if groups else None
        if group and row_widths[group[0]] == width and (len(group) + 1) * width <= max_batch_tokens:
            group.append(index)
        else:
            groups.append([index])
    return groups


@dataclass(frozen=True)
class PassShape:
    """The shape of one forward pass: rows x width input slots, `scored` output-head rows."""

    rows: int
    width: int
    scored: int

    @property
    def slots(self) -> int:
        return self.rows * self.width


def pass_layout(
    examples: Sequence[Example],
    pack_length: int,
    max_batch_tokens: int,
    pad_multiple: int,
    packing: bool,
) -> tuple[list[list[int]], list[int], list[list[int]]]:
    """(examples of each row, padded width of each row, rows of each forward pass)."""
    if not examples:
        raise ValueError("an optimizer step needs at least one example")
    rows = layout_rows(examples, pack_length, packing)
    widths = [round_up(sum(examples[i].slots for i in row), pad_multiple) for row in rows]
    return rows, widths, group_rows(widths, max_batch_tokens)


def pass_shapes(
    examples: Sequence[Example],
    *,
    pack_length: int,
    max_batch_tokens: int,
    pad_multiple: int = 64,
    packing: bool = True,
) -> list[PassShape]:
    """The shapes `micro_batches` would give these examples, without building the arrays."""
    rows, widths, groups = pass_layout(
        examples, pack_length, max_batch_tokens, pad_multiple, packing
    )
    shapes = []
    for group in groups:
        supervised = sum(examples[i].n_supervised for r in group for i in rows[r])
        slots = len(group) * widths[group[0]]
        # As scored_indices pads them, when an unweighted slot exists to point at.
        scored = supervised if supervised == slots else round_up(max(supervised, 1), pad_multiple)
        shapes.append(PassShape(len(group), widths[group[0]], scored))
    return shapes


def micro_batches(
    examples: Sequence[Example],
    *,
    pack_length: int,
    max_batch_tokens: int,
    pad_multiple: int = 64,
    packing: bool = True,
    pad_id: int = 0,
    step_examples: int | None = None,
) -> list[MicroBatch]:
    """The forward passes of one optimizer step over `examples` (weights sum to one step).

    `step_examples`: the examples of the whole step when `examples` is one rank's share of it
    (`train.distributed`); each example then weighs 1 / step_examples, so the ranks' sums add
    up to the step."""
    rows, widths, groups = pass_layout(
        examples, pack_length, max_batch_tokens, pad_multiple, packing
    )
    n_step = step_examples or len(examples)
    batches = []
    for group in groups:
        width = widths[group[0]]
        shape = (len(group), width)
        inputs = np.full(shape, pad_id, np.int32)
        targets = np.zeros(shape, np.int32)
        weights = np.zeros(shape, np.float32)
        positions = np.zeros(shape, np.int32)
        segments = np.full(shape, PAD_SEGMENT, np.int32)
        valid = np.zeros(shape, np.bool_)
        members: list[int] = []
        for r, row_index in enumerate(group):
            offset = 0
            for i in rows[row_index]:
                example = examples[i]
                ids = np.asarray(example.ids, np.int32)
                supervised = np.asarray(example.mask[1:], np.bool_)
                span = slice(offset, offset + example.slots)
                inputs[r, span] = ids[:-1]
                targets[r, span] = ids[1:]
                weights[r, span] = supervised / np.float32(example.n_supervised * n_step)
                positions[r, span] = np.arange(example.slots)
                segments[r, span] = len(members)
                valid[r, span] = True
                members.append(example.row)
                offset += example.slots
        scored = scored_indices(weights, pad_multiple)
        batches.append(
            MicroBatch(inputs, targets, weights, positions, segments, valid, members, scored)
        )
    return batches


def scored_indices(weights: np.ndarray, pad_multiple: int) -> np.ndarray:
    """Flat indices of the weighted targets, padded (when an unweighted slot exists to point
    at) to a multiple of `pad_multiple` so the compiled step sees few shapes."""
    flat = weights.reshape(-1)
    chosen = np.flatnonzero(flat > 0)
    unweighted = np.flatnonzero(flat == 0)
    if unweighted.size == 0:
        return chosen.astype(np.int32)
    padding = round_up(max(chosen.size, 1), pad_multiple) - chosen.size
    return np.concatenate([chosen, np.full(padding, unweighted[0])]).astype(np.int32)
