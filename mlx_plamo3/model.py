"""PLaMo 3 (pfnet/plamo-3-nict-2b-base) in MLX.

Module attribute paths equal the Hugging Face checkpoint keys
(`model.layers.layers.{i}.mixer.qkv_proj`, ...), so loading needs no rename table and a PEFT
export is a prefix and a transpose. RMSNorm weights stay the stored deltas; the per-norm offset
lives in the module.

Attention windows follow PFN's definition (the vLLM plugin hands `window_size` to vLLM as the
per-layer sliding window): a query at position i on a sliding layer sees keys j with
i - window_size < j <= i, that is `window_size` keys including itself. Masks are built from token
positions, not slot indices, so left padding, padding after a shared prefix and packed examples
all use the same code path as a single sequence.

`ModelArgs.from_dict` is the one place a config.json becomes args: it refuses a document that is
not a JSON object, another model type, missing keys, values of the wrong type or range
(`VALUE_RULES`: sizes are positive integers, never booleans) and head counts that do not divide,
each error naming the file and the key; unknown keys are logged.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, fields
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from mlx_plamo3.errors import InputError

logger = logging.getLogger(__name__)

# Keys every Hugging Face config may carry that do not shape the network.
_BOOKKEEPING_KEYS = frozenset(
    {
        "architectures",
        "auto_map",
        "torch_dtype",
        "dtype",
        "transformers_version",
        "_name_or_path",
        "_commit_hash",
        "use_cache",
        "attention_dropout",
        "hidden_act",
        "initializer_range",
        "quantization_config",
    }
)


def _is_size(value: Any) -> bool:
    return type(value) is int and value > 0  # type(), not isinstance: JSON true is no size


def _is_optional_size(value: Any) -> bool:
    return value is None or _is_size(value)


def _is_token_id(value: Any) -> bool:
    return type(value) is int and value >= 0


def _is_optional_token_id(value: Any) -> bool:
    return value is None or _is_token_id(value)


def _is_eos_token_ids(value: Any) -> bool:
    return _is_optional_token_id(value) or (
        isinstance(value, list) and all(_is_token_id(token) for token in value)
    )


def _is_positive_number(value: Any) -> bool:
    finite = type(value) is int or (type(value) is float and math.isfinite(value))
    return finite and value > 0


def _is_rope_base(value: Any) -> bool:
    return _is_positive_number(value) and value > 1  # the frequencies divide by log(base)


def _is_quantization(value: Any) -> bool:
    return value is None or (
        isinstance(value, dict)
        and _is_size(value.get("group_size"))
        and _is_size(value.get("bits"))
    )


_SIZE = (_is_size, "a positive integer")
_OPTIONAL_TOKEN_ID = (_is_optional_token_id, "a token id (an integer >= 0) or null")
# What each config value must be, as (test, the words an error uses); `ModelArgs.validate`
# checks every field but model_type, which `from_dict` checks first.
VALUE_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "hidden_size": _SIZE,
    "num_hidden_layers": _SIZE,
    "num_attention_heads": _SIZE,
    "num_key_value_heads": _SIZE,
    "head_dim": _SIZE,
    "intermediate_size": _SIZE,
    "vocab_size": _SIZE,
    "rms_norm_eps": (_is_positive_number, "a positive number"),
    "tie_word_embeddings": (lambda value: type(value) is bool, "true or false"),
    "window_size": _SIZE,
    "sliding_window_pattern": _SIZE,
    "rope_theta": (_is_rope_base, "a number above 1"),
    "rope_local_theta": (_is_rope_base, "a number above 1"),
    "rope_scaling_factor": (_is_positive_number, "a positive number"),
    "initial_context_length": (_is_optional_size, "a positive integer or null"),
    "max_position_embeddings": _SIZE,
    "bos_token_id": _OPTIONAL_TOKEN_ID,
    "eos_token_id": (_is_eos_token_ids, "a token id, a list of them, or null"),
    "pad_token_id": _OPTIONAL_TOKEN_ID,
    "quantization": (
        _is_quantization,
        "null or an object with positive integers group_size and bits",
    ),
}


@dataclass
class ModelArgs:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    model_type: str = "plamo3"
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    window_size: int = 2048
    sliding_window_pattern: int = 8
    rope_theta: float = 1_000_000.0
    rope_local_theta: float = 10_000.0
    rope_scaling_factor: float = 1.0
    initial_context_length: int | None = None
    max_position_embeddings: int = 2048
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = None
    quantization: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, config: dict[str, Any], source: str = "config.json") -> ModelArgs:
        """Build args from a checkpoint config (the one place a config.json becomes args):
        refuses anything but a JSON object of model type plamo3 whose values `validate`
        accepts, naming `source` and the key; logs unknown keys."""
        if not isinstance(config, dict):
            raise InputError(f"{source}: expected a JSON object, got {type(config).__name__}")
        model_type = config.get("model_type")
        if model_type != "plamo3":
            raise InputError(f"{source}: model_type is {model_type!r}, expected 'plamo3'")
        config = dict(config)
        # Some exports name the window `sliding_window`; it means the same as window_size.
        if isinstance(config.get("sliding_window"), int):
            config.setdefault("window_size", config.pop("sliding_window"))
        known = {f.name for f in fields(cls)}
        unknown = sorted(k for k in config if k not in known and k not in _BOOKKEEPING_KEYS)
        if unknown:
            logger.warning("%s: ignoring keys the model does not use: %s", source, unknown)
        missing = [
            f.name
            for f in fields(cls)
            if f.default is MISSING and f.default_factory is MISSING and f.name not in config
        ]
        if missing:
            raise InputError(f"{source}: missing required keys {missing}")
        args = cls(**{k: v for k, v in config.items() if k in known})
        args.validate(source)
        return args

    def validate(self, source: str = "config.json") -> None:
        """Raise InputError naming `source` and the key for a value `VALUE_RULES` refuses, or
        for head counts and widths the attention cannot be built from."""
        for key, (is_valid, expected) in VALUE_RULES.items():
            value = getattr(self, key)
            if not is_valid(value):
                got = json.dumps(value, default=repr)
                raise InputError(f"{source}: {key} must be {expected}, got {got}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise InputError(
                f"{source}: num_attention_heads ({self.num_attention_heads}) is not a multiple "
                f"of num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2:
            raise InputError(f"{source}: head_dim ({self.head_dim}) must be even for RoPE")

    def is_full_attention(self, layer_idx: int) -> bool:
        return (layer_idx + 1) % self.sliding_window_pattern == 0


def linear_shapes(args: ModelArgs) -> dict[str, tuple[int, int]]:
    """(in, out) of each linear layer of one decoder layer, by module name (LoRA
    targets, PEFT shapes and the memory plan read them here)."""
    q_dim = args.num_attention_heads * args.head_dim
    kv_dim = args.num_key_value_heads * args.head_dim
    return {
        "qkv_proj": (args.hidden_size, q_dim + 2 * kv_dim),
        "o_proj": (q_dim, args.hidden_size),
        "gate_up_proj": (args.hidden_size, 2 * args.intermediate_size),
        "down_proj": (args.intermediate_size, args.hidden_size),
    }


class RMSNorm(nn.Module):
    """RMSNorm whose effective scale is `weight + offset`; `weight` holds the stored delta."""

    def __init__(self, dims: int, eps: float, offset: float = 1.0):
        super().__init__()
        self.weight = mx.zeros((dims,))
        self.eps = eps
        self.offset = offset

    def __call__(self, x: mx.array) -> mx.array:
        return mx.fast.rms_norm(x, self.weight + self.offset, self.eps)


def rope_inverse_frequencies(args: ModelArgs, full_attention: bool) -> tuple[mx.array, float]:
    """Inverse frequencies of one RoPE kind and the yarn attention factor applied to cos/sin.

    Yarn (only on full layers, when rope_scaling_factor != 1) blends interpolated and original
    frequencies with a linear ramp between the correction dims of beta_fast=32 and beta_slow=1,
    unrounded (PFN's config sets yarn's truncate=False).
    """
    dim = args.head_dim
    base = args.rope_theta if full_attention else args.rope_local_theta
    inv_freq = base ** (-mx.arange(0, dim, 2, dtype=mx.float32) / dim)
    factor = args.rope_scaling_factor
    if not full_attention or factor == 1.0:
        return inv_freq, 1.0
    original_context = args.initial_context_length or args.max_position_embeddings

    def correction_dim(rotations: float) -> float:
        return dim * math.log(original_context / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(correction_dim(32.0), 0.0)
    high = min(correction_dim(1.0), dim - 1.0)
    if high == low:
        high += 0.001
    ramp = mx.clip((mx.arange(dim // 2, dtype=mx.float32) - low) / (high - low), 0.0, 1.0)
    inv_freq = (inv_freq / factor) * ramp + inv_freq * (1.0 - ramp)
    attention_factor = 0.1 * math.log(factor) + 1.0 if factor > 1.0 else 1.0
    return inv_freq, attention_factor


class Rotary:
    """cos/sin for one forward pass at explicit positions, shared by all layers of a kind."""

    def __init__(self, inv_freq: mx.array, attention_factor: float, positions: mx.array):
        angles = positions.astype(mx.float32)[:, None, :, None] * inv_freq  # [B, 1, L, D/2]
        self.cos = mx.cos(angles) * attention_factor
        self.sin = mx.sin(angles) * attention_factor

    def __call__(self, x: mx.array) -> mx.array:
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        cos, sin = self.cos.astype(x.dtype), self.sin.astype(x.dtype)
        return mx.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


class LayerKV:
    """Keys and values of one layer, in a buffer grown in steps to avoid a copy per token."""

    step = 256

    def __init__(self) -> None:
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.length = 0

    def update(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        new = keys.shape[2]
        if self.keys is None or self.length + new > self.keys.shape[2]:
            grow = ((new + self.step - 1) // self.step) * self.step
            shape = (*keys.shape[:2], self.length + grow, keys.shape[3])
            k_buf, v_buf = mx.zeros(shape, keys.dtype), mx.zeros(shape, values.dtype)
            if self.keys is not None:
                k_buf[:, :, : self.length] = self.keys[:, :, : self.length]
                v_buf[:, :, : self.length] = self.values[:, :, : self.length]
            self.keys, self.values = k_buf, v_buf
        self.keys[:, :, self.length : self.length + new] = keys
        self.values[:, :, self.length : self.length + new] = values
        self.length += new
        return self.keys[:, :, : self.length], self.values[:, :, : self.length]

    def drop_front(self, count: int) -> None:
        self.keys = self.keys[:, :, count : self.length]
        self.values = self.values[:, :, count : self.length]
        self.length -= count


class KeyMeta:
    """Position and validity of every cached key slot, per batch row."""

    def __init__(self, positions: mx.array, valid: mx.array):
        self.positions = positions
        self.valid = valid

    def extend(self, positions: mx.array, valid: mx.array) -> KeyMeta:
        return KeyMeta(
            mx.concatenate([self.positions, positions], axis=1),
            mx.concatenate([self.valid, valid], axis=1),
        )


def stack_padded(arrays: Sequence[mx.array], pads: Sequence[int], axis: int) -> mx.array:
    """`arrays` concatenated along the batch axis, each first padded in front along `axis` by
    its pad (zeros)."""
    parts = []
    for array, pad in zip(arrays, pads, strict=True):
        shape = list(array.shape)
        shape[axis] = pad
        parts.append(mx.concatenate([mx.zeros(shape, array.dtype), array], axis=axis))
    return mx.concatenate(parts)


class Plamo3Cache:
    """KV cache for generation: full layers keep every key, sliding layers drop keys that have
    left the window of every row (in chunks, so decoding does not copy the cache each token)."""

    def __init__(self, args: ModelArgs, batch_size: int = 1):
        self.args = args
        self.layers = [LayerKV() for _ in range(args.num_hidden_layers)]
        self.sliding = [not args.is_full_attention(i) for i in range(args.num_hidden_layers)]
        empty = KeyMeta(mx.zeros((batch_size, 0), mx.int32), mx.zeros((batch_size, 0), mx.bool_))
        self.full_meta = empty
        self.sliding_meta = empty
        self.next_positions = mx.zeros((batch_size,), mx.int32)

    def trim_sliding(self) -> None:
        meta = self.sliding_meta
        if meta.positions.shape[1] < LayerKV.step + self.args.window_size:
            return
        # A slot is still needed if any row's next query can see it.
        oldest_visible = self.next_positions[:, None] - self.args.window_size + 1
        needed = mx.any(meta.valid & (meta.positions >= oldest_visible), axis=0).tolist()
        drop = needed.index(True) if True in needed else len(needed)
        if drop < LayerKV.step:
            return
        self.sliding_meta = KeyMeta(meta.positions[:, drop:], meta.valid[:, drop:])
        for layer, sliding in zip(self.layers, self.sliding, strict=True):
            if sliding:
                layer.drop_front(drop)

    def copy(self, batch: int) -> Plamo3Cache:
        """A new cache whose `batch` rows each repeat this batch-1 cache (a shared prefix)."""
        twin = Plamo3Cache(self.args, batch)
        for mine, theirs in zip(self.layers, twin.layers, strict=True):
            if mine.keys is not None:
                theirs.keys = mx.repeat(mine.keys[:, :, : mine.length], batch, axis=0)
                theirs.values = mx.repeat(mine.values[:, :, : mine.length], batch, axis=0)
                theirs.length = mine.length
        for name in ("full_meta", "sliding_meta"):
            meta = getattr(self, name)
            repeated = KeyMeta(mx.repeat(meta.positions, batch, 0), mx.repeat(meta.valid, batch, 0))
            setattr(twin, name, repeated)
        twin.next_positions = mx.repeat(self.next_positions, batch, 0)
        return twin

    def layers_of_kind(self, sliding: bool) -> list[LayerKV]:
        kinds = zip(self.layers, self.sliding, strict=True)
        return [layer for layer, kind in kinds if kind == sliding]

    @staticmethod
    def stack(caches: Sequence[Plamo3Cache]) -> Plamo3Cache:
        """One cache whose rows are the rows of `caches`, in order. Per layer kind, a cache with
        fewer key slots is padded in front with invalid slots (position 0, never attended to),
        so every row goes on computing what it computed alone."""
        stacked = Plamo3Cache(caches[0].args, 0)
        for sliding, name in ((False, "full_meta"), (True, "sliding_meta")):
            metas = [getattr(cache, name) for cache in caches]
            width = max(meta.positions.shape[1] for meta in metas)
            pads = [width - meta.positions.shape[1] for meta in metas]
            positions = stack_padded([meta.positions for meta in metas], pads, 1)
            valid = stack_padded([meta.valid for meta in metas], pads, 1)
            setattr(stacked, name, KeyMeta(positions, valid))
            sides = [cache.layers_of_kind(sliding) for cache in caches]
            for target, *layers in zip(stacked.layers_of_kind(sliding), *sides, strict=True):
                target.keys = stack_padded([kv.keys[:, :, : kv.length] for kv in layers], pads, 2)
                target.values = stack_padded(
                    [kv.values[:, :, : kv.length] for kv in layers], pads, 2
                )
                target.length = width
        stacked.next_positions = mx.concatenate([cache.next_positions for cache in caches])
        return stacked

    def rows(self, index: Sequence[int]) -> Plamo3Cache:
        """The cache of rows `index` (in that order), without the leading key slots none of
        them can see."""
        picked = mx.array(list(index), dtype=mx.int32)
        kept = Plamo3Cache(self.args, 0)
        for sliding, name in ((False, "full_meta"), (True, "sliding_meta")):
            meta = getattr(self, name)
            valid = meta.valid[picked]
            seen = mx.any(valid, axis=0).tolist()
            start = seen.index(True) if True in seen else len(seen)
            setattr(kept, name, KeyMeta(meta.positions[picked, start:], valid[:, start:]))
            layers = zip(self.layers_of_kind(sliding), kept.layers_of_kind(sliding), strict=True)
            for mine, theirs in layers:
                theirs.keys = mine.keys[picked, :, start : mine.length]
                theirs.values = mine.values[picked, :, start : mine.length]
                theirs.length = mine.length - start
        kept.next_positions = self.next_positions[picked]
        return kept


def attention_allowed(
    query_positions: mx.array,
    keys: KeyMeta,
    window: int | None,
    query_segments: mx.array | None = None,
    key_segments: mx.array | None = None,
) -> mx.array:
    """Boolean mask [B, 1, L, S]: causal by position, valid keys only, within the window.

    The last L key slots are the queries themselves; each query always sees its own slot so a
    padding row never has an empty softmax (which would turn into NaN and leak into caches)."""
    q = query_positions[:, :, None]
    k = keys.positions[:, None, :]
    allowed = (k <= q) & keys.valid[:, None, :]
    if window is not None:
        allowed = allowed & (q - k < window)
    if query_segments is not None and key_segments is not None:
        allowed = allowed & (query_segments[:, :, None] == key_segments[:, None, :])
    num_queries, num_keys = query_positions.shape[1], keys.positions.shape[1]
    own_slot = (
        mx.arange(num_keys)[None, :] - (num_keys - num_queries) == mx.arange(num_queries)[:, None]
    )
    return (allowed | own_slot)[:, None]


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.num_heads = args.num_attention_heads
        self.num_kv_heads = args.num_key_value_heads
        self.head_dim = args.head_dim
        self.scale = args.head_dim**-0.5
        q_dim, kv_dim = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.split_points = [q_dim, q_dim + kv_dim]
        self.qkv_proj = nn.Linear(args.hidden_size, q_dim + 2 * kv_dim, bias=False)
        self.o_proj = nn.Linear(q_dim, args.hidden_size, bias=False)
        self.q_norm = RMSNorm(self.head_dim, args.rms_norm_eps, offset=1.0)
        self.k_norm = RMSNorm(self.head_dim, args.rms_norm_eps, offset=1.0)

    def __call__(
        self, x: mx.array, rotary: Rotary, mask: mx.array, cache: LayerKV | None = None
    ) -> mx.array:
        batch, length, _ = x.shape
        queries, keys, values = mx.split(self.qkv_proj(x), self.split_points, axis=-1)

        def heads(t: mx.array, count: int) -> mx.array:
            return t.reshape(batch, length, count, self.head_dim).transpose(0, 2, 1, 3)

        queries = rotary(self.q_norm(heads(queries, self.num_heads)))
        keys = rotary(self.k_norm(heads(keys, self.num_kv_heads)))
        values = heads(values, self.num_kv_heads)
        if cache is not None:
            keys, values = cache.update(keys, values)
        out = self.attend(queries, keys, values, mask)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(batch, length, -1))

    def attend(self, queries: mx.array, keys: mx.array, values: mx.array, mask: mx.array):
        """Scaled dot-product attention of [B, heads, L, head_dim] queries over the keys."""
        return mx.fast.scaled_dot_product_attention(
            queries, keys, values, scale=self.scale, mask=mask
        )


class MLP(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.gate_up_proj = nn.Linear(args.hidden_size, 2 * args.intermediate_size, bias=False)
        self.down_proj = nn.Linear(args.intermediate_size, args.hidden_size, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        gate, up = mx.split(self.gate_up_proj(x), 2, axis=-1)
        return self.down_proj(nn.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, args: ModelArgs, layer_idx: int):
        super().__init__()
        self.full_attention = args.is_full_attention(layer_idx)
        eps = args.rms_norm_eps
        self.mixer = Attention(args)
        self.mlp = MLP(args)
        self.pre_mixer_norm = RMSNorm(args.hidden_size, eps, offset=1.0)
        self.post_mixer_norm = RMSNorm(args.hidden_size, eps, offset=1.0 / 5)
        self.pre_mlp_norm = RMSNorm(args.hidden_size, eps, offset=1.0)
        self.post_mlp_norm = RMSNorm(args.hidden_size, eps, offset=1.0 / 5**1.5)

    def __call__(
        self, x: mx.array, rotary: Rotary, mask: mx.array, cache: LayerKV | None = None
    ) -> mx.array:
        h = x + self.post_mixer_norm(self.mixer(self.pre_mixer_norm(x), rotary, mask, cache))
        return h + self.post_mlp_norm(self.mlp(self.pre_mlp_norm(h)))


class DecoderStack(nn.Module):
    """Holds the layer list so its path is `model.layers.layers.{i}` as in the checkpoint."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.layers = [DecoderLayer(args, i) for i in range(args.num_hidden_layers)]


class Plamo3Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = DecoderStack(args)
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps, offset=1.0)


class Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        self.model = Plamo3Model(args)
        if not args.tie_word_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        self._rope = {
            kind: rope_inverse_frequencies(args, full_attention=kind) for kind in (True, False)
        }
        # Evaluated now: MLX ties an unevaluated array to the stream of the thread that made it,
        # and a server answers on other threads than the one that built the model.
        mx.eval([inv_freq for inv_freq, _ in self._rope.values()])

    @property
    def layers(self) -> list[DecoderLayer]:
        return self.model.layers.layers

    def make_cache(self, batch_size: int = 1) -> Plamo3Cache:
        return Plamo3Cache(self.args, batch_size)

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Checkpoint fix-ups, idempotent: a tied checkpoint may still carry lm_head."""
        if self.args.tie_word_embeddings:
            weights.pop("lm_head.weight", None)
        return {k: v for k, v in weights.items() if "rotary_emb.inv_freq" not in k}

    def __call__(
        self,
        inputs: mx.array,
        cache: Plamo3Cache | None = None,
        attention_mask: mx.array | None = None,
        positions: mx.array | None = None,
        segment_ids: mx.array | None = None,
    ) -> mx.array:
        """Logits [B, L, vocab] for token ids [B, L].

        attention_mask: [B, L], 1 for real tokens and 0 for padding (anywhere in the row).
        positions: [B, L] RoPE positions; by default real tokens count up from the cache's
        next position. segment_ids: [B, L] for packed rows; tokens only see their own segment.
        """
        return self.logits(
            self.hidden_states(inputs, cache, attention_mask, positions, segment_ids)
        )

    def logits(self, hidden: mx.array) -> mx.array:
        """The output head on final hidden states (any leading shape)."""
        if self.args.tie_word_embeddings:
            return self.model.embed_tokens.as_linear(hidden)
        return self.lm_head(hidden)

    def attention_inputs(
        self,
        positions: mx.array,
        full_keys: KeyMeta,
        sliding_keys: KeyMeta,
        segment_ids: mx.array | None = None,
    ) -> tuple[dict[bool, Rotary], dict[bool, mx.array]]:
        """RoPE tables and masks of the queries at `positions`, by layer kind (True: full)."""
        masks = {
            True: attention_allowed(positions, full_keys, None, segment_ids, segment_ids),
            False: attention_allowed(
                positions, sliding_keys, self.args.window_size, segment_ids, segment_ids
            ),
        }
        rotaries = {kind: Rotary(*self._rope[kind], positions) for kind in (True, False)}
        return rotaries, masks

    def hidden_states(
        self,
        inputs: mx.array,
        cache: Plamo3Cache | None = None,
        attention_mask: mx.array | None = None,
        positions: mx.array | None = None,
        segment_ids: mx.array | None = None,
    ) -> mx.array:
        """Final normed hidden states [B, L, hidden]; training applies the head only where
        the loss needs it, sparing the [B, L, vocab] logits."""
        batch, length = inputs.shape
        valid = (
            mx.ones((batch, length), mx.bool_)
            if attention_mask is None
            else attention_mask.astype(mx.bool_)
        )
        if positions is None:
            start = cache.next_positions[:, None] if cache is not None else 0
            positions = start + mx.maximum(mx.cumsum(valid.astype(mx.int32), axis=1) - 1, 0)
        positions = positions.astype(mx.int32)
        new_keys = KeyMeta(positions, valid)
        if cache is not None:
            full_keys = cache.full_meta.extend(positions, valid)
            sliding_keys = cache.sliding_meta.extend(positions, valid)
        else:
            full_keys = sliding_keys = new_keys
        rotaries, masks = self.attention_inputs(positions, full_keys, sliding_keys, segment_ids)

        h = self.model.embed_tokens(inputs)
        for i, layer in enumerate(self.layers):
            kind = layer.full_attention
            layer_cache = cache.layers[i] if cache is not None else None
            h = layer(h, rotaries[kind], masks[kind], layer_cache)
        h = self.model.norm(h)

        if cache is not None:
            cache.full_meta, cache.sliding_meta = full_keys, sliding_keys
            last = mx.max(mx.where(valid, positions, -1), axis=1)
            cache.next_positions = mx.maximum(cache.next_positions, last + 1)
            cache.trim_sliding()
        return h
