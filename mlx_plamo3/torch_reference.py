"""An independent PyTorch implementation of PLaMo 3 (``pfnet/plamo-3-nict-2b-base``).

It is the reference the MLX port is checked against, and the base model the PyTorch check loads
before applying a PEFT LoRA, so it is a ``transformers`` ``PreTrainedModel`` whose attribute paths
equal the Hugging Face checkpoint keys. The attention math (masking, RoPE, YaRN, the sliding
window) is written out here in plain torch on purpose: nothing is borrowed from transformers'
attention or masking utilities, so a bug there cannot hide a bug in the port.

torch is an optional dependency of ``mlx_plamo3``: only this module imports it.

Architecture facts were read from PFN's vLLM plugin (``pfnet-research/vllm-plamo3-plugin``,
``vllm_plamo3/plamo3.py``), vLLM's in-tree ``plamo3.py`` and the family's ``Plamo3Config``:

- layer ``i`` is full attention iff ``(i + 1) % sliding_window_pattern == 0``; the others attend
  through a sliding window of ``window_size`` keys (see :func:`attention_allowed`);
- q/k get a per-head RMSNorm over ``head_dim`` before RoPE (rotate-half form); RoPE base is
  ``rope_theta`` on full layers and ``rope_local_theta`` on sliding layers; YaRN only on full
  layers and only when ``rope_scaling_factor != 1`` (see :func:`rope_inv_freq`);
- RMSNorm checkpoint weights are deltas from an offset that lives in the module (see
  :data:`NORM_OFFSETS`), so a checkpoint and a PEFT merge round-trip unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GenerationMixin,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from mlx_plamo3.loading import read_config, weight_files
from mlx_plamo3.model import ModelArgs

# Effective RMSNorm scale = stored weight + offset. Values from PFN's vLLM plugin, which adds
# these offsets to the checkpoint weights while loading.
NORM_OFFSETS: dict[str, float] = {
    "pre_mixer_norm": 1.0,
    "post_mixer_norm": 1.0 / 5,
    "pre_mlp_norm": 1.0,
    "post_mlp_norm": 1.0 / 5**1.5,
    "q_norm": 1.0,
    "k_norm": 1.0,
    "norm": 1.0,  # the final model.norm
}

# YaRN settings PFN's Plamo3Config puts in its full-attention rope parameters.
YARN_BETA_FAST = 32.0
YARN_BETA_SLOW = 1.0

# transformers 5 renamed the output field `past_key_values` to `cache`; 4.x has the old name.
_CACHE_FIELD = (
    "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
)


class Plamo3Config(PretrainedConfig):
    """Configuration of the PLaMo 3 family; unknown keys are kept as attributes.

    Legacy keys accepted like PFN's config does: ``sliding_window`` (an int, or a per-layer list
    whose non-None entries agree) becomes ``window_size``; ``rope_global_theta`` stands in for a
    missing ``rope_theta``. The window is deliberately not exposed as ``sliding_window`` or
    ``layer_types``: transformers would then build a window-trimmed ``DynamicCache``, while this
    model's masks index a cache that keeps every key.
    """

    model_type = "plamo3"

    def __init__(
        self,
        hidden_size: int = 4096,
        num_hidden_layers: int = 32,
        num_attention_heads: int = 32,
        num_key_value_heads: int = 4,
        head_dim: int = 128,
        intermediate_size: int = 13312,
        vocab_size: int = 32000,
        rms_norm_eps: float = 1e-6,
        tie_word_embeddings: bool = True,
        max_position_embeddings: int = 2048,
        window_size: int = 2048,
        sliding_window_pattern: int = 8,
        rope_theta: float | None = None,
        rope_local_theta: float = 10_000.0,
        rope_scaling_factor: float = 1.0,
        initial_context_length: int | None = None,
        scale_embedding: bool = False,
        initializer_range: float = 0.02,
        use_cache: bool = True,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        pad_token_id: int | None = 3,
        **kwargs: Any,
    ) -> None:
        legacy_window = kwargs.pop("sliding_window", None)
        if legacy_window is not None:
            window_size = _window_from_legacy(legacy_window, window_size)
        legacy_theta = kwargs.pop("rope_global_theta", None)
        if rope_theta is None:
            rope_theta = legacy_theta if legacy_theta is not None else 1_000_000.0

        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.intermediate_size = intermediate_size
        self.vocab_size = vocab_size
        self.rms_norm_eps = rms_norm_eps
        self.max_position_embeddings = max_position_embeddings
        self.window_size = window_size
        self.sliding_window_pattern = sliding_window_pattern
        self.rope_theta = rope_theta
        self.rope_local_theta = rope_local_theta
        self.rope_scaling_factor = rope_scaling_factor
        self.initial_context_length = initial_context_length
        self.scale_embedding = scale_embedding
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        _validate_config(self)
        super().__init__(
            tie_word_embeddings=tie_word_embeddings,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            **kwargs,
        )

    def is_full_attention(self, layer_idx: int) -> bool:
        """Whether layer ``layer_idx`` uses full (global) attention."""
        return is_full_attention_layer(layer_idx, self.sliding_window_pattern)


def _window_from_legacy(legacy: int | list[int | None], default: int) -> int:
    """The window size from a legacy ``sliding_window`` value (int or per-layer list)."""
    if isinstance(legacy, int):
        return legacy
    windows = {w for w in legacy if w is not None}
    if len(windows) > 1:
        raise ValueError(f"per-layer sliding_window values disagree: {sorted(windows)}")
    return windows.pop() if windows else default


def _validate_config(config: Plamo3Config) -> None:
    if config.num_attention_heads % config.num_key_value_heads:
        raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
    if config.head_dim % 2:
        raise ValueError("head_dim must be even for rotate-half RoPE")
    if config.sliding_window_pattern < 1 or config.window_size < 1:
        raise ValueError("sliding_window_pattern and window_size must be >= 1")
    if config.rope_scaling_factor != 1 and config.initial_context_length is None:
        raise ValueError("rope_scaling_factor != 1 (YaRN) needs initial_context_length")
    if config.scale_embedding:
        # PFN's own vLLM implementation ignores this flag, so its meaning is unconfirmed.
        raise NotImplementedError("scale_embedding=True is not supported")


def is_full_attention_layer(layer_idx: int, sliding_window_pattern: int) -> bool:
    """Every ``sliding_window_pattern``-th layer (counting from 1) attends globally."""
    return (layer_idx + 1) % sliding_window_pattern == 0


# --------------------------------------------------------------------------------------------
# Pure functions: RoPE/YaRN, masks, positions
# --------------------------------------------------------------------------------------------


def rope_inv_freq(
    head_dim: int,
    theta: float,
    scaling_factor: float = 1.0,
    original_context_length: int | None = None,
) -> tuple[torch.Tensor, float]:
    """RoPE inverse frequencies (float64, length ``head_dim // 2``) and the cos/sin multiplier.

    Plain RoPE: ``f_i = theta ** (-2i / d)`` for ``i < d/2``, multiplier 1.

    YaRN (``scaling_factor`` s != 1, as in PFN's config: beta_fast 32, beta_slow 1,
    ``original_max_position_embeddings = initial_context_length`` L, ``truncate = False``; the
    same math as vLLM's YaRNScalingRotaryEmbedding and transformers' ``_compute_yarn_parameters``)::

        corr(r) = d * ln(L / (2 pi r)) / (2 ln theta)
        low = max(corr(beta_fast), 0);  high = min(corr(beta_slow), d - 1)   # no floor/ceil
        ramp_i = clamp((i - low) / (high - low), 0, 1)     # high += 0.001 if low == high
        f'_i = f_i / s * ramp_i + f_i * (1 - ramp_i)
        multiplier = 0.1 * ln(s) + 1 if s > 1 else 1        # scales both cos and sin
    """
    index = torch.arange(0, head_dim, 2, dtype=torch.float64)
    inv_freq = 1.0 / theta ** (index / head_dim)
    if scaling_factor == 1:
        return inv_freq, 1.0
    if original_context_length is None:
        raise ValueError("YaRN needs original_context_length")

    def correction_dim(rotations: float) -> float:
        return (head_dim * math.log(original_context_length / (rotations * 2 * math.pi))) / (
            2 * math.log(theta)
        )

    low = max(correction_dim(YARN_BETA_FAST), 0.0)
    high = min(correction_dim(YARN_BETA_SLOW), float(head_dim - 1))
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    scaled = inv_freq / scaling_factor * ramp + inv_freq * (1 - ramp)
    multiplier = 0.1 * math.log(scaling_factor) + 1.0 if scaling_factor > 1 else 1.0
    return scaled, multiplier


def rope_cos_sin(
    positions: torch.Tensor, inv_freq: torch.Tensor, multiplier: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape ``[batch, seq, head_dim]`` (float32) for integer ``positions [batch, seq]``.

    Angles are computed in float64 on the CPU (MPS has no float64), then moved to the device.
    """
    angles = positions.detach().to("cpu", torch.float64)[..., None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)  # rotate-half layout: both halves share angles
    cos = (angles.cos() * multiplier).to(positions.device, torch.float32)
    sin = (angles.sin() * multiplier).to(positions.device, torch.float32)
    return cos, sin


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half (non-interleaved) RoPE on ``x [batch, heads, seq, head_dim]``, in float32."""
    xf = x.float()
    first, second = xf.chunk(2, dim=-1)
    rotated = torch.cat([-second, first], dim=-1)
    return (xf * cos[:, None] + rotated * sin[:, None]).to(x.dtype)


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """RoPE positions from a 2-D padding mask: each real token's index among real tokens.

    Pads get position 0; they are never attended to, so their value does not matter.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def attention_allowed(
    query_index: torch.Tensor,
    key_index: torch.Tensor,
    key_valid: torch.Tensor,
    window: int | None,
) -> torch.Tensor:
    """Boolean ``[batch, 1, queries, keys]``: may the query at index i attend to the key at j?

    Causal (``j <= i``), the key is a real token, and for a sliding layer ``i - W < j <= i``: the
    query sees the ``W = window_size`` most recent keys, itself included. Indices are positions in
    the (padded) row, which equal token distances because real tokens are contiguous.

    Evidence for the window: PFN's plugin passes ``per_layer_sliding_window=window_size`` to
    vLLM's ``Attention``; vLLM's FlashAttentionImpl turns a sliding window W into flash-attn's
    ``window_size=(W - 1, 0)``; flash-attn documents that a query at i attends to keys in
    ``[i - window_size[0], i + window_size[1]]`` inclusive, i.e. ``[i - W + 1, i]``.
    """
    distance = query_index[:, None] - key_index[None, :]
    allowed = distance >= 0
    if window is not None:
        allowed = allowed & (distance < window)
    return allowed[None, None] & key_valid[:, None, None, :]


def attend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    allowed: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Softmax attention in float32 with grouped KV heads; returns ``[batch, heads, q, head_dim]``.

    Query head h reads KV head ``h // (heads / kv_heads)``. Rows with no visible key (queries at
    pad positions) output zeros instead of NaN, so nothing non-finite reaches real tokens.
    """
    group = query.shape[1] // key.shape[1]
    key = key.float().repeat_interleave(group, dim=1)
    value = value.float().repeat_interleave(group, dim=1)
    scores = (query.float() @ key.transpose(-1, -2)) * scale
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    probs = torch.where(allowed, probs, 0.0)
    return (probs @ value).to(query.dtype)


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


class OffsetRMSNorm(nn.Module):
    """RMSNorm whose effective scale is ``weight + offset``; ``weight`` holds the stored delta."""

    def __init__(self, dim: int, eps: float, offset: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))
        self.eps = eps
        self.offset = offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * (self.weight.float() + self.offset)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, offset={self.offset:.6g}"


class Plamo3Attention(nn.Module):
    """The ``mixer``: fused qkv, per-head q/k RMSNorm, RoPE, GQA softmax attention, o_proj."""

    def __init__(self, config: Plamo3Config, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.scale = config.head_dim**-0.5
        self.is_full = config.is_full_attention(layer_idx)
        q_size = self.num_heads * self.head_dim
        kv_size = self.num_kv_heads * self.head_dim
        self.split_sizes = [q_size, kv_size, kv_size]
        self.qkv_proj = nn.Linear(config.hidden_size, q_size + 2 * kv_size, bias=False)
        self.o_proj = nn.Linear(q_size, config.hidden_size, bias=False)
        eps = config.rms_norm_eps
        self.q_norm = OffsetRMSNorm(self.head_dim, eps, NORM_OFFSETS["q_norm"])
        self.k_norm = OffsetRMSNorm(self.head_dim, eps, NORM_OFFSETS["k_norm"])
        if self.is_full:
            self.rope = (
                config.rope_theta,
                config.rope_scaling_factor,
                config.initial_context_length,
            )
        else:  # sliding layers never use YaRN
            self.rope = (config.rope_local_theta, 1.0, None)

    def forward(
        self,
        hidden: torch.Tensor,
        positions: torch.Tensor,
        allowed: torch.Tensor,
        cache: Cache | None,
    ) -> torch.Tensor:
        batch, length, _ = hidden.shape
        q, k, v = self.qkv_proj(hidden).split(self.split_sizes, dim=-1)
        q = self.q_norm(q.view(batch, length, self.num_heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(k.view(batch, length, self.num_kv_heads, self.head_dim)).transpose(1, 2)
        v = v.view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        inv_freq, multiplier = rope_inv_freq(self.head_dim, *self.rope)
        cos, sin = rope_cos_sin(positions, inv_freq, multiplier)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        if k.shape[2] != allowed.shape[-1]:
            raise ValueError("the cache must keep every key (a plain DynamicCache)")
        out = attend(q, k, v, allowed, self.scale)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))


class Plamo3MLP(nn.Module):
    """``down(silu(gate) * up)`` with ``gate`` the first half of the fused ``gate_up_proj``."""

    def __init__(self, config: Plamo3Config) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Plamo3DecoderLayer(nn.Module):
    """Sandwich-norm block: both sublayer outputs are normed again before the residual add."""

    def __init__(self, config: Plamo3Config, layer_idx: int) -> None:
        super().__init__()
        eps = config.rms_norm_eps
        self.mixer = Plamo3Attention(config, layer_idx)
        self.mlp = Plamo3MLP(config)
        for name in ("pre_mixer_norm", "post_mixer_norm", "pre_mlp_norm", "post_mlp_norm"):
            setattr(self, name, OffsetRMSNorm(config.hidden_size, eps, NORM_OFFSETS[name]))

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        allowed: torch.Tensor,
        cache: Cache | None,
    ) -> torch.Tensor:
        mixed = self.mixer(self.pre_mixer_norm(x), positions, allowed, cache)
        h = x + self.post_mixer_norm(mixed)
        return h + self.post_mlp_norm(self.mlp(self.pre_mlp_norm(h)))


class Plamo3Decoder(nn.Module):
    """Holds the layer list so the checkpoint paths read ``model.layers.layers.{i}``."""

    def __init__(self, config: Plamo3Config) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            Plamo3DecoderLayer(config, i) for i in range(config.num_hidden_layers)
        )


class Plamo3Model(nn.Module):
    """Embeddings, decoder stack and final norm (the checkpoint's ``model.`` prefix)."""

    def __init__(self, config: Plamo3Config) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = Plamo3Decoder(config)
        self.norm = OffsetRMSNorm(config.hidden_size, config.rms_norm_eps, NORM_OFFSETS["norm"])

    def forward(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        cache: Cache | None,
    ) -> torch.Tensor:
        batch, length, _ = hidden.shape
        device = hidden.device
        past = cache.get_seq_length() if cache is not None else 0
        total = past + length
        if attention_mask is None:
            key_valid = torch.ones(batch, total, dtype=torch.bool, device=device)
        elif attention_mask.shape != (batch, total):
            raise ValueError(
                f"attention_mask must be 2-D [batch, past + new] = {(batch, total)}, "
                f"got {tuple(attention_mask.shape)}"
            )
        else:
            key_valid = attention_mask.to(device=device, dtype=torch.bool)
        if position_ids is None:
            if attention_mask is None:
                position_ids = torch.arange(past, total, device=device).expand(batch, length)
            else:
                position_ids = positions_from_mask(key_valid)[:, past:]
        query_index = torch.arange(past, total, device=device)
        key_index = torch.arange(total, device=device)
        full = attention_allowed(query_index, key_index, key_valid, None)
        sliding = attention_allowed(query_index, key_index, key_valid, self.config.window_size)
        for layer in self.layers.layers:
            allowed = full if layer.mixer.is_full else sliding
            hidden = layer(hidden, position_ids, allowed, cache)
        return self.norm(hidden)


class Plamo3ForCausalLM(PreTrainedModel, GenerationMixin):
    """PLaMo 3 causal LM. With tied embeddings there is no ``lm_head`` module: logits are
    ``hidden @ model.embed_tokens.weight.T``, and :meth:`get_output_embeddings` returns None.

    ``forward`` accepts a 2-D padding mask (1 = real, 0 = pad; left or right padding, real tokens
    contiguous) covering past + new tokens, and a ``transformers`` ``DynamicCache`` as
    ``past_key_values`` (or ``cache``, the transformers 5 name).
    """

    config_class = Plamo3Config
    base_model_prefix = "model"
    _no_split_modules: ClassVar[list[str]] = ["Plamo3DecoderLayer"]

    def __init__(self, config: Plamo3Config) -> None:
        super().__init__(config)
        self.model = Plamo3Model(config)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Plamo3ForCausalLM:
        """``PreTrainedModel.from_pretrained`` that never falls back to pickled weights."""
        kwargs.setdefault("use_safetensors", True)
        return super().from_pretrained(*args, **kwargs)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, OffsetRMSNorm):
            nn.init.zeros_(module.weight)  # zero delta = the offset scale
        elif isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear | None:
        return getattr(self, "lm_head", None)

    def set_output_embeddings(self, value: nn.Linear) -> None:
        if self.config.tie_word_embeddings:
            raise ValueError("tied embeddings: the output projection is model.embed_tokens")
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        labels: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: Cache | None = None,
        logits_to_keep: int = 0,
        return_dict: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast | tuple:
        if output_attentions or output_hidden_states:
            raise NotImplementedError("attentions/hidden states are not returned")
        if past_key_values is not None and cache is not None:
            raise ValueError("pass the cache once, as past_key_values or cache")
        cache = cache if cache is not None else past_key_values
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = DynamicCache()
        elif not use_cache:
            cache = None
        hidden = self.model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        hidden = self.model(hidden, attention_mask, position_ids, cache)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        if self.config.tie_word_embeddings:
            logits = F.linear(hidden, self.model.embed_tokens.weight)
        else:
            logits = self.lm_head(hidden)
        loss = None if labels is None else causal_lm_loss(logits, labels)
        output = CausalLMOutputWithPast(loss=loss, logits=logits, **{_CACHE_FIELD: cache})
        return output if return_dict is not False else output.to_tuple()


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross entropy in float32; label -100 is ignored."""
    shifted = logits[:, :-1].float().reshape(-1, logits.shape[-1])
    targets = labels[:, 1:].reshape(-1).to(logits.device)
    return F.cross_entropy(shifted, targets, ignore_index=-100)


def register_auto_classes() -> None:
    """Register ``plamo3`` with AutoConfig/AutoModelForCausalLM (safe to call repeatedly)."""
    AutoConfig.register(Plamo3Config.model_type, Plamo3Config, exist_ok=True)
    AutoModelForCausalLM.register(Plamo3Config, Plamo3ForCausalLM, exist_ok=True)


register_auto_classes()


# --------------------------------------------------------------------------------------------
# Loading and generation
# --------------------------------------------------------------------------------------------


def read_safetensors_dir(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a Hugging Face checkpoint directory (single file or index + shards),
    found as the MLX loader finds them (`weight_files`: pickled weights are refused)."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for file in weight_files(Path(path)):
        shard = load_file(str(file))
        duplicated = state.keys() & shard.keys()
        if duplicated:
            raise ValueError(f"tensors stored twice, e.g. in {file}: {sorted(duplicated)[:5]}")
        state.update(shard)
    return state


def sanitize_state(config: Plamo3Config, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop what the model recomputes or shares: RoPE ``inv_freq`` buffers, and a tied
    ``lm_head.weight`` (only if it really equals the embeddings)."""
    clean = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
    head = clean.get("lm_head.weight")
    if config.tie_word_embeddings and head is not None:
        embed = clean.get("model.embed_tokens.weight")
        if embed is None or not torch.equal(head, embed):
            raise ValueError(
                "tie_word_embeddings is set but lm_head.weight differs from embeddings"
            )
        del clean["lm_head.weight"]
    return clean


def check_keys(expected: Iterable[str], found: Iterable[str]) -> None:
    """Raise listing every missing and unexpected key."""
    expected_set, found_set = set(expected), set(found)
    missing = sorted(expected_set - found_set)
    unexpected = sorted(found_set - expected_set)
    if missing or unexpected:
        raise KeyError(f"checkpoint keys do not match: missing={missing} unexpected={unexpected}")


def load_reference(
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> Plamo3ForCausalLM:
    """Load a local Hugging Face PLaMo 3 checkpoint (``config.json`` + safetensors) in eval mode.

    The key check is strict; weights are cast to ``dtype`` and placed on ``device``.
    """
    root = Path(path)
    config_dict = read_config(root)
    # The MLX loader's checks, so a bad config.json is one error naming the key, not a torch
    # traceback; the torch config is still built from the file on its own.
    ModelArgs.from_dict(config_dict, source=str(root / "config.json"))
    config = Plamo3Config.from_dict(config_dict)
    config._name_or_path = str(root)
    state = sanitize_state(config, read_safetensors_dir(root))
    # Build on the meta device: random init of billions of weights would be thrown away anyway.
    with torch.device("meta"):
        model = Plamo3ForCausalLM(config)
    check_keys(model.state_dict().keys(), state.keys())
    state = {
        k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
        for k, v in state.items()
    }
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


@torch.no_grad()
def greedy_generate(
    model: nn.Module,
    input_ids: list[int],
    max_new_tokens: int,
    stop_ids: set[int],
) -> list[int]:
    """Greedy decoding of one prompt with a KV cache, independent of ``GenerationMixin``.

    Returns the new tokens; a stop id, when produced, is the last element (like ``generate``).
    Works on a ``Plamo3ForCausalLM`` or a PEFT model wrapping one; call ``model.eval()`` first.
    """
    if not input_ids:
        raise ValueError("the prompt must not be empty")
    device = next(model.parameters()).device
    cache = DynamicCache()
    step = torch.tensor([input_ids], device=device)
    new_tokens: list[int] = []
    for _ in range(max_new_tokens):
        out = model(input_ids=step, past_key_values=cache, use_cache=True, logits_to_keep=1)
        token = int(out.logits[0, -1].argmax())
        new_tokens.append(token)
        if token in stop_ids:
            break
        step = torch.tensor([[token]], device=device)
    return new_tokens
