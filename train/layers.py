"""Training-time behaviour of the LoRA model: keyed dropout and gradient checkpointing.

Why keyed dropout: gradient checkpointing recomputes a layer in the backward pass by calling it
again, and an unkeyed dropout draws from the global random state, so the recomputed layer would
draw new masks and its gradient would not belong to the forward pass that made the loss. Here
each forward pass gets one key, each layer a key split from it, and every LoRA dropout in the
layer draws from that layer's key stream (`LoRALinear.dropout_keys`); a recomputation is handed
the same key and draws the same masks. It also makes the masks a function of (seed, step,
pass), so a resumed run draws what the uninterrupted run drew without saving any random state.

The layers keep their class's parameters and paths (their class is swapped for a subclass), so
adapter keys are unchanged; in eval mode, or with a KV cache (generation), they are plain
layers. `recomputing_loss_and_grad` is the checkpointed (loss, gradients) of a pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from mlx_plamo3.lora import LoRALinear
from mlx_plamo3.model import DecoderLayer, KeyMeta, LayerKV, Model, Rotary
from train.loss import scored_loss


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


class TrainingDecoderLayer(DecoderLayer):
    """A decoder layer that, in training, starts its dropout stream from its own key, so a
    second call with the same key (a recomputation) draws the same masks."""

    layer_index: int
    forward_keys: ForwardKeys
    stream: KeyStream

    def __call__(
        self, x: mx.array, rotary: Rotary, mask: mx.array, cache: LayerKV | None = None
    ) -> mx.array:
        if cache is None and self.training:
            self.stream.start(self.forward_keys.for_layer(self.layer_index))
        return DecoderLayer.__call__(self, x, rotary, mask, cache)


def prepare_for_training(model: Model, lora_dropout: float) -> ForwardKeys:
    """Give every LoRA layer keyed dropout and every decoder layer the training behaviour.

    Returns the ForwardKeys to `set` before each training forward pass. Idempotent."""
    keys = ForwardKeys(len(model.layers))
    for index, layer in enumerate(model.layers):
        stream = KeyStream()
        for _, module in layer.named_modules():
            if isinstance(module, LoRALinear):
                module.dropout_p = lora_dropout
                module.dropout_keys = stream.next
        layer.__class__ = TrainingDecoderLayer
        layer.layer_index = index
        layer.forward_keys = keys
        layer.stream = stream
    return keys


def recomputing_loss_and_grad(
    model: Model, keys: ForwardKeys
) -> Callable[..., tuple[mx.array, dict[str, Any]]]:
    """Gradient checkpointing: (loss, gradients) of a pass, holding one layer at a time.

    The forward runs without gradients and keeps only each layer's input; the loss's gradient
    then goes back one layer at a time, each layer recomputed from its input (same dropout key)
    under `mx.vjp` and evaluated before the next, so the peak is every layer's input plus one
    layer's forward and backward. (`mx.checkpoint` inside one `value_and_grad` saves nothing
    here: MLX keeps the checkpointed layers' forward graphs alive until the whole backward is
    evaluated, and the recomputation comes on top; see BENCHMARKS.md.)

    Same signature and gradient tree as the `nn.value_and_grad` of `train.loss.weighted_loss`.
    """

    def loss_and_grad(inputs, targets, weights, positions, segments, valid, scored, key):
        keys.set(key)
        attended = KeyMeta(positions, valid)
        rotaries, masks = model.attention_inputs(positions, attended, attended, segments)
        layer_inputs = [model.model.embed_tokens(inputs)]
        for layer in model.layers[:-1]:
            kind = layer.full_attention
            layer_inputs.append(layer(layer_inputs[-1], rotaries[kind], masks[kind]))
        mx.eval(layer_inputs)

        last = model.layers[-1]

        def top(params, x):
            last.update(params)
            kind = last.full_attention
            hidden = model.model.norm(last(x, rotaries[kind], masks[kind]))
            return scored_loss(model, hidden, targets, weights, scored)

        def backward_through(layer, x, cotangent):
            names, values = zip(*tree_flatten(layer.trainable_parameters()), strict=True)

            def run(*arrays):
                layer.update(tree_unflatten(list(zip(names, arrays[:-1], strict=True))))
                kind = layer.full_attention
                return layer(arrays[-1], rotaries[kind], masks[kind])

            _, grads = mx.vjp(run, [*values, x], [cotangent])
            return tree_unflatten(list(zip(names, grads[:-1], strict=True))), grads[-1]

        grads: list[Any] = [None] * len(model.layers)
        loss, (grads[-1], cotangent) = mx.value_and_grad(top, argnums=(0, 1))(
            last.trainable_parameters(), layer_inputs[-1]
        )
        mx.eval(loss, grads[-1], cotangent)
        for index in range(len(model.layers) - 2, -1, -1):
            layer = model.layers[index]
            grads[index], cotangent = backward_through(layer, layer_inputs[index], cotangent)
            mx.eval(grads[index], cotangent)
        return loss, {"model": {"layers": {"layers": grads}}}

    return loss_and_grad


def pass_key(seed: int, step: int, pass_index: int) -> mx.array:
    """The dropout key of one forward pass: a function of (seed, step, pass) only."""
    digest = hashlib.sha256(f"{seed}:{step}:{pass_index}".encode()).digest()
    return mx.random.key(int.from_bytes(digest[:8], "little"))
