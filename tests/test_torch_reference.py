"""Tests of the PyTorch reference implementation of PLaMo 3 (tiny random models, fp32)."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from safetensors.torch import save_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
from transformers.cache_utils import DynamicCache  # noqa: E402

from mlx_plamo3.torch_reference import (  # noqa: E402
    OffsetRMSNorm,
    Plamo3Config,
    Plamo3ForCausalLM,
    greedy_generate,
    is_full_attention_layer,
    load_reference,
    register_auto_classes,
    rope_inv_freq,
)

PAD, EOS = 3, 2
LORA_TARGETS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]


def tiny_config(**overrides) -> Plamo3Config:
    """4 layers, pattern 2: layers 0 and 2 slide over 8 keys, layers 1 and 3 are full."""
    values = dict(
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=96,
        vocab_size=300,
        window_size=8,
        sliding_window_pattern=2,
        max_position_embeddings=256,
    )
    values.update(overrides)
    return Plamo3Config(**values)


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights big enough for sharp attention, and non-zero norm deltas."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if name.endswith("norm.weight"):
                param.copy_(0.3 * noise)
            elif "embed_tokens" in name:
                param.copy_(0.25 * noise)  # logits of order 1: fp32 error stays << 1e-5
            else:
                param.copy_(noise / math.sqrt(param.shape[1]))
    return model


def tiny_model(seed: int = 0, **overrides) -> Plamo3ForCausalLM:
    return randomize_(Plamo3ForCausalLM(tiny_config(**overrides)), seed).eval()


def random_tokens(length: int, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(4, 300, (length,), generator=gen).tolist()


def pad_batch(seqs: list[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids, mask = [], []
    for s in seqs:
        fill = [PAD] * (width - len(s))
        ones, zeros = [1] * len(s), [0] * len(fill)
        ids.append(fill + s if side == "left" else s + fill)
        mask.append(zeros + ones if side == "left" else ones + zeros)
    return torch.tensor(ids), torch.tensor(mask)


def logits_of(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


def trim_at_stop(tokens: list[int], stop: int) -> list[int]:
    return tokens[: tokens.index(stop) + 1] if stop in tokens else tokens


# ---------------------------------------------------------------------------- config


def test_config_defaults_and_layer_pattern():
    cfg = Plamo3Config()
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (1, 2, 3)
    assert cfg.tie_word_embeddings is True
    assert (cfg.window_size, cfg.sliding_window_pattern) == (2048, 8)
    assert (cfg.rope_theta, cfg.rope_local_theta, cfg.rope_scaling_factor) == (1e6, 1e4, 1.0)
    assert cfg.rms_norm_eps == 1e-6
    full = [i for i in range(cfg.num_hidden_layers) if cfg.is_full_attention(i)]
    assert full == [7, 15, 23, 31]
    assert not is_full_attention_layer(0, 1000)


def test_config_legacy_keys_unknown_keys_and_round_trip():
    cfg = Plamo3Config(
        num_hidden_layers=4,
        sliding_window=[16, 16, 16, None],
        rope_global_theta=5e5,
        some_future_key={"a": 1},
    )
    assert cfg.window_size == 16 and cfg.rope_theta == 5e5
    assert not hasattr(cfg, "sliding_window")  # keeps transformers' cache untrimmed
    again = Plamo3Config.from_dict(cfg.to_dict())
    assert again.some_future_key == {"a": 1}
    assert again.window_size == 16 and again.rope_theta == 5e5
    with pytest.raises(ValueError, match="disagree"):
        Plamo3Config(sliding_window=[8, 16, None])
    with pytest.raises(ValueError, match="initial_context_length"):
        Plamo3Config(rope_scaling_factor=4.0)


# ---------------------------------------------------------------------------- structure


@pytest.mark.parametrize("tied", [True, False])
def test_state_dict_keys_are_checkpoint_keys(tied):
    model = Plamo3ForCausalLM(tiny_config(tie_word_embeddings=tied))
    per_layer = [
        "mixer.qkv_proj",
        "mixer.o_proj",
        "mixer.q_norm",
        "mixer.k_norm",
        "mlp.gate_up_proj",
        "mlp.down_proj",
        "pre_mixer_norm",
        "post_mixer_norm",
        "pre_mlp_norm",
        "post_mlp_norm",
    ]
    expected = {"model.embed_tokens.weight", "model.norm.weight"}
    expected |= {f"model.layers.layers.{i}.{p}.weight" for i in range(4) for p in per_layer}
    if not tied:
        expected.add("lm_head.weight")
    state = model.state_dict()
    assert set(state) == expected
    assert state["model.layers.layers.0.mixer.qkv_proj.weight"].shape == ((4 + 2 + 2) * 16, 64)
    assert state["model.layers.layers.0.mlp.gate_up_proj.weight"].shape == (2 * 96, 64)
    assert state["model.layers.layers.0.mixer.q_norm.weight"].shape == (16,)
    assert (model.get_output_embeddings() is None) == tied


def test_tied_logits_use_the_embedding_matrix():
    model = tiny_model()
    ids = random_tokens(6, seed=1)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), use_cache=False)
        hidden = model.model(model.model.embed_tokens(torch.tensor([ids])), None, None, None)
    expected = hidden @ model.model.embed_tokens.weight.T
    torch.testing.assert_close(out.logits, expected, rtol=0, atol=1e-6)


def test_norm_offsets_live_in_the_module(tmp_path):
    model = Plamo3ForCausalLM(tiny_config())
    assert all(
        torch.count_nonzero(m.weight) == 0 for m in model.modules() if isinstance(m, OffsetRMSNorm)
    ), "fresh norms must hold zero deltas"
    randomize_(model)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, OffsetRMSNorm):
                module.weight.zero_()
    model.save_pretrained(tmp_path)
    loaded = load_reference(tmp_path)
    expected_offsets = {
        "pre_mixer_norm": 1.0,
        "post_mixer_norm": 0.2,
        "pre_mlp_norm": 1.0,
        "post_mlp_norm": 5**-1.5,
        "q_norm": 1.0,
        "k_norm": 1.0,
        "norm": 1.0,
    }
    seen = set()
    for name, module in loaded.named_modules():
        if not isinstance(module, OffsetRMSNorm):
            continue
        kind = name.rsplit(".", 1)[-1]
        seen.add(kind)
        assert torch.count_nonzero(module.weight) == 0
        x = torch.randn(3, module.weight.shape[0])
        unit = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        torch.testing.assert_close(module(x), unit * expected_offsets[kind])
    assert seen == set(expected_offsets)


# ---------------------------------------------------------------------------- attention math


def naive_mixer(mixer, x: torch.Tensor, theta: float, window: int | None) -> torch.Tensor:
    """Token-by-token, head-by-head attention written from the architecture description."""
    heads, kv_heads, dim = mixer.num_heads, mixer.num_kv_heads, mixer.head_dim
    w = mixer.qkv_proj.weight
    q_all = x @ w[: heads * dim].T
    k_all = x @ w[heads * dim : (heads + kv_heads) * dim].T
    v_all = x @ w[(heads + kv_heads) * dim :].T

    def rms(vec, delta):
        return vec / math.sqrt(float(vec.pow(2).mean()) + 1e-6) * (delta + 1.0)

    def rotate(vec, pos):
        out = vec.clone()
        for p in range(dim // 2):
            angle = pos * theta ** (-2 * p / dim)
            a, b = float(vec[p]), float(vec[p + dim // 2])
            out[p] = a * math.cos(angle) - b * math.sin(angle)
            out[p + dim // 2] = b * math.cos(angle) + a * math.sin(angle)
        return out

    length = x.shape[0]
    keys = [
        [
            rotate(rms(k_all[t, g * dim : (g + 1) * dim], mixer.k_norm.weight), t)
            for t in range(length)
        ]
        for g in range(kv_heads)
    ]
    outputs = torch.zeros(length, heads * dim)
    for i in range(length):
        for h in range(heads):
            g = h // (heads // kv_heads)
            q = rotate(rms(q_all[i, h * dim : (h + 1) * dim], mixer.q_norm.weight), i)
            visible = [j for j in range(i + 1) if window is None or i - j < window]
            scores = [float(q @ keys[g][j]) / math.sqrt(dim) for j in visible]
            top = max(scores)
            weights = [math.exp(s - top) for s in scores]
            total = sum(weights)
            for wj, j in zip(weights, visible, strict=True):
                outputs[i, h * dim : (h + 1) * dim] += (
                    wj / total * v_all[j, g * dim : (g + 1) * dim]
                )
    return outputs @ mixer.o_proj.weight.T


def test_decoder_layer_wiring_and_gated_mlp():
    layer = tiny_model().model.layers.layers[1]
    x = torch.randn(1, 6, 64, generator=torch.Generator().manual_seed(2))
    positions = torch.arange(6)[None]
    allowed = torch.ones(6, 6).tril().bool()[None, None]
    gate_w, up_w = layer.mlp.gate_up_proj.weight[:96], layer.mlp.gate_up_proj.weight[96:]

    def mlp(v):
        gate, up = v @ gate_w.T, v @ up_w.T
        return (gate * torch.sigmoid(gate) * up) @ layer.mlp.down_proj.weight.T

    with torch.no_grad():
        h = x + layer.post_mixer_norm(
            layer.mixer(layer.pre_mixer_norm(x), positions, allowed, None)
        )
        expected = h + layer.post_mlp_norm(mlp(layer.pre_mlp_norm(h)))
        got = layer(x, positions, allowed, None)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layer_idx", [0, 1])
def test_mixer_matches_naive_loop(layer_idx):
    model = tiny_model()
    layer = model.model.layers.layers[layer_idx]
    is_full = layer_idx == 1
    assert layer.mixer.is_full == is_full
    x = torch.randn(1, 13, 64, generator=torch.Generator().manual_seed(5))
    length = x.shape[1]
    positions = torch.arange(length)[None]
    index = torch.arange(length)
    distance = index[:, None] - index[None, :]
    allowed = (distance >= 0) & (is_full | (distance < 8))
    with torch.no_grad():
        fast = layer.mixer(x, positions, allowed[None, None], None)[0]
        slow = naive_mixer(layer.mixer, x[0], 1e6 if is_full else 1e4, None if is_full else 8)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


def test_sliding_window_sees_exactly_w_keys_including_itself():
    """Query i sees keys j with i - W < j <= i: a token W back is invisible, W - 1 back is not."""
    window, length = 4, 10
    sliding = tiny_model(num_hidden_layers=1, sliding_window_pattern=1000, window_size=window)
    assert not sliding.model.layers.layers[0].mixer.is_full
    full = Plamo3ForCausalLM(tiny_config(num_hidden_layers=1, sliding_window_pattern=1))
    full.load_state_dict(sliding.state_dict())
    full.eval()
    ids = random_tokens(length, seed=3)
    last = length - 1

    def changed_at(model, index):
        edited = list(ids)
        edited[index] = 4 + (edited[index] + 1) % 296
        return logits_of(model, ids)[-1], logits_of(model, edited)[-1]

    before, after = changed_at(sliding, last - window)
    assert torch.equal(before, after)
    before, after = changed_at(sliding, last - (window - 1))
    assert (before - after).abs().max() > 1e-3
    before, after = changed_at(full, last - window)
    assert (before - after).abs().max() > 1e-3


def test_yarn_matches_transformers_and_applies_only_to_full_layers():
    inv, mult = rope_inv_freq(16, 1e6, 4.0, 1024)
    plain, one = rope_inv_freq(16, 1e6)
    assert one == 1.0 and mult == pytest.approx(0.1 * math.log(4.0) + 1)
    assert inv[0] == plain[0]  # fastest dimension extrapolates (unchanged)
    assert inv[-1] == pytest.approx(plain[-1] / 4)  # slowest is interpolated
    try:
        from transformers import LlamaConfig
        from transformers.modeling_rope_utils import _compute_yarn_parameters

        params = {
            "rope_type": "yarn",
            "rope_theta": 1e6,
            "factor": 4.0,
            "original_max_position_embeddings": 1024,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "truncate": False,
        }
        llama = LlamaConfig(
            hidden_size=64, num_attention_heads=4, head_dim=16, rope_parameters=params
        )
        theirs, their_mult = _compute_yarn_parameters(llama)
    except (ImportError, TypeError, KeyError):  # transformers 4.x has another rope API
        pass
    else:
        torch.testing.assert_close(theirs.double(), inv, rtol=1e-6, atol=0)
        assert their_mult == pytest.approx(mult)
    cfg = tiny_config(rope_scaling_factor=4.0, initial_context_length=32)
    model = Plamo3ForCausalLM(cfg)
    ropes = [layer.mixer.rope for layer in model.model.layers.layers]
    assert ropes[0] == (1e4, 1.0, None) and ropes[1] == (1e6, 4.0, 32)


# ---------------------------------------------------------------------------- padding and cache


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_matches_single_sequences(side):
    model = tiny_model()
    seqs = [random_tokens(n, seed=n) for n in (20, 13, 7)]
    ids, mask = pad_batch(seqs, side)
    with torch.no_grad():
        batch_logits = model(input_ids=ids, attention_mask=mask).logits
    for row, seq in enumerate(seqs):
        real = mask[row].bool()
        single = logits_of(model, seq)
        assert (batch_logits[row][real] - single).abs().max() <= 1e-5


def test_explicit_position_ids_equal_derived_ones():
    model = tiny_model()
    ids, mask = pad_batch([random_tokens(9, 1), random_tokens(5, 2)], "left")
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        derived = model(input_ids=ids, attention_mask=mask).logits
        explicit = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    assert torch.equal(derived, explicit)


def test_cached_decoding_matches_full_forward():
    model = tiny_model()
    ids = random_tokens(21, seed=7)
    full = logits_of(model, ids)
    cache = DynamicCache()
    pieces = [ids[:9], ids[9:12]] + [[t] for t in ids[12:]]  # two prefill chunks, then 1 by 1
    got = []
    with torch.no_grad():
        for piece in pieces:
            out = model(input_ids=torch.tensor([piece]), past_key_values=cache, use_cache=True)
            got.append(out.logits[0])
    assert cache.get_seq_length() == len(ids)
    assert (torch.cat(got) - full).abs().max() <= 1e-5


def test_cached_decoding_with_left_padding_matches_full_forward():
    model = tiny_model()
    ids, mask = pad_batch([random_tokens(14, 1), random_tokens(6, 2)], "left")
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask).logits
        cache = DynamicCache()
        first = model(input_ids=ids[:, :10], attention_mask=mask[:, :10], past_key_values=cache)
        rest = model(input_ids=ids[:, 10:], attention_mask=mask, past_key_values=cache)
    got = torch.cat([first.logits, rest.logits], dim=1)
    real = mask.bool()
    assert (got[real] - full[real]).abs().max() <= 1e-5


def test_loss_is_shifted_cross_entropy():
    model = tiny_model()
    ids = torch.tensor([random_tokens(8, seed=2)])
    labels = ids.clone()
    labels[0, :3] = -100
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels)
    expected = torch.nn.functional.cross_entropy(out.logits[0, 2:-1], ids[0, 3:])
    torch.testing.assert_close(out.loss, expected)


# ---------------------------------------------------------------------------- generation


def test_generate_with_left_padding_equals_greedy_helper():
    model = tiny_model()
    prompts = [random_tokens(12, seed=11), random_tokens(5, seed=12)]
    ids, mask = pad_batch(prompts, "left")
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=10,
            do_sample=False,
            pad_token_id=PAD,
            eos_token_id=EOS,
        )
    for row, prompt in enumerate(prompts):
        expected = greedy_generate(model, prompt, 10, {EOS})
        assert trim_at_stop(out[row, ids.shape[1] :].tolist(), EOS) == expected
        assert len(prompt) + len(expected) > 8  # decoding crosses the sliding window


def test_greedy_helper_stops_at_stop_id():
    model = tiny_model()
    prompt = random_tokens(6, seed=4)
    free = greedy_generate(model, prompt, 6, set())
    assert len(free) == 6
    stopped = greedy_generate(model, prompt, 6, {free[2]})
    assert stopped == free[: free.index(free[2]) + 1]


# ---------------------------------------------------------------------------- loading


@pytest.mark.parametrize("tied", [True, False])
def test_save_pretrained_round_trips(tmp_path, tied):
    model = tiny_model(tie_word_embeddings=tied)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    ids = random_tokens(15, seed=9)
    expected = logits_of(model, ids)
    assert torch.equal(logits_of(load_reference(tmp_path), ids), expected)
    register_auto_classes()  # idempotent
    register_auto_classes()
    for cls in (Plamo3ForCausalLM, AutoModelForCausalLM):
        loaded = cls.from_pretrained(tmp_path).eval()
        assert isinstance(loaded, Plamo3ForCausalLM)
        assert torch.equal(logits_of(loaded, ids), expected)


def test_load_reference_reads_shards_and_casts(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    loaded = load_reference(tmp_path, dtype=torch.bfloat16)
    assert loaded.model.embed_tokens.weight.dtype == torch.bfloat16
    assert not loaded.training
    ids = random_tokens(6, seed=1)
    assert logits_of(loaded, ids).dtype == torch.bfloat16


def write_checkpoint(path, config: Plamo3Config, state: dict) -> None:
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config.to_dict()))
    save_file({k: v.contiguous() for k, v in state.items()}, str(path / "model.safetensors"))


def test_load_reference_is_strict_about_keys(tmp_path):
    model = tiny_model()
    state = dict(model.state_dict())
    extra = dict(state, **{"model.layers.layers.0.mixer.bogus.weight": torch.zeros(2)})
    write_checkpoint(tmp_path / "extra", model.config, extra)
    with pytest.raises(
        KeyError, match=r"unexpected=\['model.layers.layers.0.mixer.bogus.weight'\]"
    ):
        load_reference(tmp_path / "extra")
    missing = {k: v for k, v in state.items() if k != "model.norm.weight"}
    write_checkpoint(tmp_path / "missing", model.config, missing)
    with pytest.raises(KeyError, match=r"missing=\['model.norm.weight'\]"):
        load_reference(tmp_path / "missing")
    # A tied checkpoint may also store lm_head.weight, but only as a copy of the embeddings.
    head = dict(state, **{"lm_head.weight": state["model.embed_tokens.weight"].clone()})
    write_checkpoint(tmp_path / "head", model.config, head)
    ids = random_tokens(5, seed=2)
    assert torch.equal(logits_of(load_reference(tmp_path / "head"), ids), logits_of(model, ids))


def test_load_reference_refuses_pickled_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(tiny_config().to_dict()))
    (tmp_path / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(ValueError, match="pickled"):
        load_reference(tmp_path)


# ---------------------------------------------------------------------------- peft


def test_peft_lora_wraps_changes_round_trips_and_generates(tmp_path):
    peft = pytest.importorskip("peft")
    base = tiny_model()
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    ids = random_tokens(12, seed=5)
    base_logits = logits_of(base, ids)

    lora = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=LORA_TARGETS, lora_dropout=0.0, task_type="CAUSAL_LM"
    )
    wrapped = peft.get_peft_model(base, lora).eval()
    wrapped_names = {
        n.rsplit(".", 1)[-1] for n, m in wrapped.named_modules() if hasattr(m, "lora_A")
    }
    assert wrapped_names == set(LORA_TARGETS)
    assert torch.equal(logits_of(wrapped, ids), base_logits)  # lora_B starts at zero

    gen = torch.Generator().manual_seed(8)
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_B" in name:
                param.copy_(0.5 * torch.randn(param.shape, generator=gen))
    lora_logits = logits_of(wrapped, ids)
    assert (lora_logits - base_logits).abs().max() > 1e-2

    wrapped.save_pretrained(tmp_path)
    fresh = Plamo3ForCausalLM(tiny_config())
    fresh.load_state_dict(base_state)
    loaded = peft.PeftModel.from_pretrained(fresh.eval(), tmp_path).eval()
    assert torch.equal(logits_of(loaded, ids), lora_logits)

    prompt = ids[:7]
    expected = greedy_generate(loaded, prompt, 8, {EOS})
    with torch.no_grad():
        out = loaded.generate(
            input_ids=torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=8,
            do_sample=False,
            pad_token_id=PAD,
            eos_token_id=EOS,
        )
    assert trim_at_stop(out[0, len(prompt) :].tolist(), EOS) == expected

    merged = loaded.merge_and_unload()
    assert isinstance(merged, Plamo3ForCausalLM)
    assert (logits_of(merged, ids) - lora_logits).abs().max() <= 1e-4
