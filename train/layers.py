"""Training-time behaviour of the LoRA model: keyed dropout and gradient checkpointing.

Why keyed dropout: `mx.checkpoint` recomputes a layer in the backward pass by calling it again,
and `nn.Dropout` draws from the global random state, so the recomputed layer would draw new
masks and its gradient would not belong to the forward pass that made the loss. Here each
forward pass gets one key, each layer a key split from it, and every LoRA dropout in the layer
draws from that layer's key; a recomputation is handed the same key and draws the same masks.
It also makes the masks a function of (seed, step, pass), so a resumed run draws what the
uninterrupted run drew without saving any random state.

The layers keep their class's parameters and paths (their class is swapped for a subclass), so
adapter keys are unchanged; in eval mode, or with a KV cache (generation), they are plain
layers.
"""

from __future__ import annotations

import copy
import hashlib

import mlx.core as mx
import mlx.nn as nn

from mlx_plamo3.lora import LoRALinear
from mlx_plamo3.model import DecoderLayer, LayerKV, Model, Rotary


class KeyStream:
    """Hands out fresh keys split from one key; reset with `start` for each layer call."""

    def __init__(self) -> None:
        self.key: mx.array | None = None

    def start(self, key: mx.array) -> None:
        self.key = key

    def next(self) -> mx.array:
        if self.key is None:
            raise RuntimeError("dropout drew a mask outside a training forward pass")
        self.key, sub = mx.random.split(self.key)
        return sub


class ForwardKeys:
    """The key of the current forward pass, split into one key per layer."""

    def __init__(self, num_layers: int) -> None:
        self.num_layers = num_layers
        self.layer_keys: mx.array | None = None

    def set(self, key: mx.array) -> None:
        self.layer_keys = mx.random.split(key, self.num_layers)

    def for_layer(self, index: int) -> mx.array:
        if self.layer_keys is None:
            raise RuntimeError("ForwardKeys.set(key) must be called before a training forward")
        return self.layer_keys[index]


class KeyedDropout(nn.Module):
    """Inverted dropout (as torch's, so PEFT's) drawing its mask from its layer's key stream."""

    def __init__(self, p: float, stream: KeyStream):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.stream = stream  # a plain object: not a parameter

    def __call__(self, x: mx.array) -> mx.array:
        if not self.training or self.p == 0.0:
            return x
        keep = mx.random.bernoulli(1.0 - self.p, x.shape, key=self.stream.next())
        return mx.where(keep, x * (1.0 / (1.0 - self.p)), mx.zeros_like(x))


class TrainingDecoderLayer(DecoderLayer):
    """A decoder layer that, in training, starts its dropout stream from its own key and
    optionally runs under `mx.checkpoint`."""

    layer_index: int
    forward_keys: ForwardKeys
    stream: KeyStream
    checkpoint: bool

    def __call__(
        self, x: mx.array, rotary: Rotary, mask: mx.array, cache: LayerKV | None = None
    ) -> mx.array:
        if cache is not None or not self.training:
            return DecoderLayer.__call__(self, x, rotary, mask, cache)
        key = self.forward_keys.for_layer(self.layer_index)
        if not self.checkpoint:
            self.stream.start(key)
            return DecoderLayer.__call__(self, x, rotary, mask)

        def body(params, x, cos, sin, mask):
            # The trainable parameters are inputs so gradients reach them through the
            # checkpoint; the frozen base weights are constants, and so is the key (random
            # bits have no derivative), captured so the recomputation reuses it.
            self.update(params)
            self.stream.start(key)
            local = copy.copy(rotary)
            local.cos, local.sin = cos, sin
            return DecoderLayer.__call__(self, x, local, mask)

        return mx.checkpoint(body)(self.trainable_parameters(), x, rotary.cos, rotary.sin, mask)


def prepare_for_training(model: Model, lora_dropout: float, checkpoint: bool) -> ForwardKeys:
    """Give every LoRA layer keyed dropout and every decoder layer the training behaviour.

    Returns the ForwardKeys to `set` before each training forward pass. Idempotent."""
    keys = ForwardKeys(len(model.layers))
    for index, layer in enumerate(model.layers):
        stream = KeyStream()
        for _, module in layer.named_modules():
            if isinstance(module, LoRALinear):
                module.dropout = KeyedDropout(lora_dropout, stream)
        layer.__class__ = TrainingDecoderLayer
        layer.layer_index = index
        layer.forward_keys = keys
        layer.stream = stream
        layer.checkpoint = checkpoint
    return keys


def pass_key(seed: int, step: int, pass_index: int) -> mx.array:
    """The dropout key of one forward pass: a function of (seed, step, pass) only."""
    digest = hashlib.sha256(f"{seed}:{step}:{pass_index}".encode()).digest()
    return mx.random.key(int.from_bytes(digest[:8], "little"))
