"""Trainer building blocks: settings, the assistant mask, batching, the schedule, LoRA vs PEFT."""

from __future__ import annotations

import json
import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from click.testing import CliRunner
from mlx.utils import tree_flatten, tree_unflatten

from mlx_plamo3.loading import load_model
from mlx_plamo3.lora import LoraConfig, LoRALinear, apply_lora
from mlx_plamo3.tokenizer import Plamo3Tokenizer
from train.batches import (
    PAD_SEGMENT,
    Example,
    encode_rows,
    micro_batches,
    pack_first_fit,
    pass_shapes,
    plan_steps,
)
from train.cli import train_command
from train.config import ConfigError, TrainConfig, load_yaml_config, merge_config, tracking_params
from train.layers import pass_key, prepare_for_training, recomputing_loss_and_grad
from train.loss import example_losses, unbatched_example_loss, weighted_loss
from train.step import make_optimizer
from train.trainer import eval_subset

TAG = "<|plamo:tag|>"
SYSTEM = 'Tools:\n{"name": "get_time"}'


def conversation(*turns: str) -> list[dict[str, str]]:
    """system, then alternating user/assistant turns."""
    messages = [{"role": "system", "content": SYSTEM}]
    for i, text in enumerate(turns):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return messages


def call(city: str) -> str:
    return json.dumps({"name": "get_time", "arguments": {"city": city}})


@pytest.fixture(scope="module")
def tokenizer(tiny_mlx_dir):
    return Plamo3Tokenizer.from_pretrained(tiny_mlx_dir)


@pytest.fixture(scope="module")
def lora_model(tiny_mlx_dir):
    """The tiny model with LoRA whose B is random (at B = 0 LoRA changes nothing)."""
    mx.random.seed(1)
    model = load_model(tiny_mlx_dir)
    apply_lora(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0))
    randomize_lora_b(model)
    model.eval()
    return model


def randomize_lora_b(model: nn.Module, seed: int = 7) -> None:
    key = mx.random.key(seed)
    updates = []
    for name, value in tree_flatten(model.trainable_parameters()):
        if name.endswith("lora_b"):
            key, sub = mx.random.split(key)
            updates.append((name, mx.random.normal(value.shape, key=sub) * 0.05))
    model.update(tree_unflatten(updates))


# ---- settings ------------------------------------------------------------------------------


def test_defaults_are_the_seed_recipe():
    config = TrainConfig()
    lora = config.lora_config()
    assert (lora.r, lora.lora_alpha, lora.lora_dropout, lora.scale) == (16, 32.0, 0.05, 2.0)
    assert lora.target_modules == ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    assert (config.learning_rate, config.lr_end_factor, config.grad_accum) == (1e-4, 0.1, 8)
    assert (config.max_grad_norm, config.epochs, config.max_length) == (1.0, 1, 768)
    assert config.dtype == "bfloat16" and config.experiment == "plamo3-tool-calling"


def test_flag_beats_file_beats_default(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("learning_rate: 3e-4\ngrad-accum: 4\ntarget_modules: [qkv_proj, o_proj]\n")
    result = CliRunner().invoke(
        train_command, ["--config", str(path), "--lr", "5e-5", "--print-config"]
    )
    assert result.exit_code == 0, result.output
    merged = __import__("yaml").safe_load(result.output)
    assert merged["learning_rate"] == 5e-5  # flag over file
    assert merged["grad_accum"] == 4  # file over default
    assert merged["target_modules"] == ["qkv_proj", "o_proj"]
    assert merged["lora_r"] == 16  # default


def test_unknown_or_mistyped_yaml_setting_is_an_error_naming_it(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("learning_rat: 1e-4\n")
    with pytest.raises(ConfigError, match=r"'learning_rat'.*did you mean 'learning_rate'"):
        load_yaml_config(path)
    path.write_text("grad_accum: eight\n")
    with pytest.raises(ConfigError, match="grad_accum: expected an integer"):
        load_yaml_config(path)
    result = CliRunner().invoke(train_command, ["--config", str(path), "--print-config"])
    assert result.exit_code != 0 and "grad_accum" in result.output


def test_out_of_range_settings_are_refused():
    with pytest.raises(ConfigError, match="lr_end_factor"):
        merge_config(flag_values={"lr_end_factor": 0.0})
    with pytest.raises(ConfigError, match="target_modules"):
        merge_config(flag_values={"target_modules": ["q_proj"]})
    with pytest.raises(ConfigError, match="resume and overwrite"):
        merge_config(flag_values={"resume": True, "overwrite": True})


def test_tracking_params_hold_every_setting_but_no_credentials():
    params = tracking_params(
        TrainConfig(max_batch_tokens=4096), {"hf_token": "hf_secret", "api_key": "x"}
    )
    assert params["lora_r"] == "16" and params["max_batch_tokens"] == "4096"
    assert params["target_modules"] == "qkv_proj,o_proj,gate_up_proj,down_proj"
    assert "hf_token" not in params and "api_key" not in params
    assert all(isinstance(v, str) for v in params.values())


# ---- the assistant-only mask ------------------------------------------------------------


def masked_spans(ids: list[int], mask: list[bool]) -> list[list[int]]:
    spans, current = [], []
    for token, flag in zip(ids, mask, strict=True):
        if flag:
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    return spans + ([current] if current else [])


def test_mask_covers_exactly_each_assistant_turn_and_its_terminator(tokenizer):
    messages = conversation(
        "Can you check the time?",
        "Sure, which city?",
        "Paris, please.",
        call("Paris"),
    )
    rows = [{"messages": messages}, {"messages": conversation("Hi", "Hello! How can I help?")}]
    encoded = encode_rows(rows, tokenizer, max_length=10_000)
    for example, row in zip(encoded.examples, rows, strict=True):
        answers = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
        spans = masked_spans(list(example.ids), list(example.mask))
        assert [tokenizer.decode(span) for span in spans] == [a + TAG for a in answers]
        # Everything outside the spans (system, user turns, role headers) is unsupervised.
        pairs = zip(example.ids, example.mask, strict=True)
        unmasked = tokenizer.decode([token for token, flag in pairs if not flag])
        others = [m["content"] for m in row["messages"] if m["role"] != "assistant"]
        assert all(text in unmasked for text in others)
        assert all(answer not in unmasked for answer in answers)
        assert unmasked.count("assistant<|plamo:msg|>") == len(answers)  # headers unsupervised


def test_training_targets_are_the_masked_tokens_shifted(tokenizer):
    rows = [{"messages": conversation("What time is it in Oslo?", call("Oslo"))}]
    example = encode_rows(rows, tokenizer, max_length=10_000).examples[0]
    (batch,) = micro_batches([example], pack_length=512, max_batch_tokens=4096)
    supervised = batch.targets[batch.weights > 0].tolist()
    assert tokenizer.decode(supervised) == call("Oslo") + TAG


def test_long_examples_are_dropped_and_counted_never_truncated(tokenizer):
    rows = [
        {"messages": conversation("Time in Rome?", call("Rome"))},
        {"messages": conversation("Time in Rome? " * 30, call("Rome"))},
    ]
    lengths = [len(tokenizer.assistant_token_mask(r["messages"])[0]) for r in rows]
    encoded = encode_rows(rows, tokenizer, max_length=lengths[0])
    assert encoded.dropped_too_long == [1]
    assert [len(e.ids) for e in encoded.examples] == [lengths[0]]


# ---- step plan and packing -------------------------------------------------------------------


def test_step_plan_is_seeded_complete_and_keeps_the_last_partial_step():
    plan = plan_steps(10, 4, epochs=2, seed=3)
    assert [len(s) for s in plan] == [4, 4, 2, 4, 4, 2]
    assert sorted(i for step in plan[:3] for i in step) == list(range(10))
    assert sorted(i for step in plan[3:] for i in step) == list(range(10))
    assert plan == plan_steps(10, 4, epochs=2, seed=3)
    assert plan != plan_steps(10, 4, epochs=2, seed=4)
    assert [i for step in plan_steps(10, 4, 1, 3, shuffle=False) for i in step] == list(range(10))


def test_first_fit_packing_respects_capacity():
    sizes = [70, 10, 40, 60, 30, 20, 90, 120]
    bins = pack_first_fit(sizes, 100)
    assert sorted(i for b in bins for i in b) == list(range(len(sizes)))
    assert all(sum(sizes[i] for i in b) <= 100 for b in bins if len(b) > 1)
    assert len(bins) == 5  # 120 alone; 90+10; 70+30; 60+40; 20


def fake_example(row: int, length: int, supervised_from: int) -> Example:
    ids = tuple(range(5, 5 + length))
    mask = tuple(i >= supervised_from for i in range(length))
    return Example(row, ids, mask)


def test_micro_batches_restart_positions_and_weight_each_example_equally():
    examples = [fake_example(i, n, n - 3) for i, n in enumerate([30, 12, 20, 7, 25])]
    batches = micro_batches(examples, pack_length=40, max_batch_tokens=64, pad_multiple=8)
    assert len(batches) > 1  # the budget forces several passes
    assert sorted(r for b in batches for r in b.examples) == [0, 1, 2, 3, 4]
    assert math.isclose(sum(float(b.weights.sum()) for b in batches), 1.0, rel_tol=1e-6)
    for batch in batches:
        assert batch.inputs.shape[1] % 8 == 0 and batch.inputs.size <= max(64, 40)
        for slot, row in enumerate(batch.examples):
            where = batch.segments == slot
            example = examples[row]
            assert batch.positions[where].tolist() == list(range(example.slots))
            assert batch.inputs[where].tolist() == list(example.ids[:-1])
            assert batch.targets[where].tolist() == list(example.ids[1:])
            # Each example's weights sum to 1 / (examples in the step).
            assert math.isclose(float(batch.weights[where].sum()), 1 / 5, rel_tol=1e-6)
        assert not batch.valid[batch.segments == PAD_SEGMENT].any()


def test_rows_of_different_widths_never_share_a_pass():
    # One example per row: widths 32, 32, 32, 16, 16 after padding to 16.
    examples = [fake_example(i, n, n - 2) for i, n in enumerate([30, 25, 20, 12, 9])]
    batches = micro_batches(
        examples, pack_length=64, max_batch_tokens=64, pad_multiple=16, packing=False
    )
    assert [b.inputs.shape for b in batches] == [(2, 32), (1, 32), (2, 16)]
    # 29 + 24, 19 and 11 + 8 input slots.
    assert [b.n_padding for b in batches] == [3 + 8, 13, 5 + 8]
    shapes = pass_shapes(
        examples, pack_length=64, max_batch_tokens=64, pad_multiple=16, packing=False
    )
    assert [(s.rows, s.width) for s in shapes] == [(2, 32), (1, 32), (2, 16)]


# ---- the loss: batched equals unbatched -------------------------------------------------------


@pytest.mark.parametrize("packing", [True, False])
def test_packed_per_example_loss_equals_unbatched(lora_model, tokenizer, packing):
    rows = [
        {"messages": conversation(f"What time is it in {city}?", call(city))}
        for city in ("Paris", "Ouagadougou", "Lima", "Rome")
    ] + [{"messages": conversation("Hi", "Hello!", "Time in Bern?", call("Bern"))}]
    examples = encode_rows(rows, tokenizer, 10_000).examples
    batches = micro_batches(
        examples, pack_length=160, max_batch_tokens=10_000, pad_multiple=32, packing=packing
    )
    rows = sum(b.inputs.shape[0] for b in batches)
    # Packed: fewer rows than examples; padded: one row per example.
    assert rows < len(examples) if packing else rows == len(examples)
    batched = {}
    for batch in batches:
        batched |= example_losses(lora_model, batch)
    for example in examples:
        assert batched[example.row] == pytest.approx(
            unbatched_example_loss(lora_model, example), rel=1e-5, abs=1e-5
        )
    # The step loss is the mean of the per-example losses (the seed's loss / grad-accum sum).
    step_loss = sum(
        float(weighted_loss(lora_model, *(mx.array(a) for a in b.arrays()))) for b in batches
    )
    expected = np.mean([unbatched_example_loss(lora_model, e) for e in examples])
    assert step_loss == pytest.approx(expected, rel=1e-5)


# ---- dropout and gradient checkpointing --------------------------------------------------------


def grads_with(tiny_mlx_dir, dropout: float, checkpoint: bool):
    mx.random.seed(0)
    model = load_model(tiny_mlx_dir)
    apply_lora(model, LoraConfig(r=4, lora_dropout=dropout))
    randomize_lora_b(model)  # with B = 0 the LoRA input (and its dropout) cannot reach the loss
    keys = prepare_for_training(model, dropout)
    model.train()
    examples = [fake_example(0, 40, 30), fake_example(1, 24, 20)]
    (batch,) = micro_batches(examples, pack_length=64, max_batch_tokens=4096, pad_multiple=16)
    arrays = [mx.array(a) for a in batch.arrays()]
    if checkpoint:
        loss, grads = recomputing_loss_and_grad(model, keys)(*arrays, pass_key(0, 0, 0))
        return float(loss), dict(tree_flatten(grads))

    def loss_fn(*arrays):
        keys.set(pass_key(0, 0, 0))
        return weighted_loss(model, *arrays)

    loss, grads = nn.value_and_grad(model, loss_fn)(*arrays)
    return float(loss), dict(tree_flatten(grads))


def test_checkpointed_layers_reuse_the_forward_dropout_masks(tiny_mlx_dir):
    loss, grads = grads_with(tiny_mlx_dir, 0.3, checkpoint=False)
    ck_loss, ck_grads = grads_with(tiny_mlx_dir, 0.3, checkpoint=True)
    no_dropout_loss, _ = grads_with(tiny_mlx_dir, 0.0, checkpoint=False)
    assert loss != pytest.approx(no_dropout_loss, rel=1e-6)  # dropout really acts
    assert ck_loss == pytest.approx(loss, rel=1e-6)
    assert grads.keys() == ck_grads.keys()
    for name, grad in grads.items():
        np.testing.assert_allclose(np.array(ck_grads[name]), np.array(grad), rtol=1e-4, atol=1e-7)


def test_lora_dropout_without_trainer_keys_draws_from_the_global_state():
    linear = nn.Linear(16, 8, bias=False)
    layer = LoRALinear(linear, LoraConfig(r=4, lora_dropout=0.5))
    layer.lora_b = mx.ones_like(layer.lora_b)
    x = mx.ones((4, 16))
    layer.eval()
    plain = np.array(layer(x))
    layer.train()
    mx.random.seed(1)
    first = np.array(layer(x))
    second = np.array(layer(x))
    assert not np.allclose(first, plain)  # dropout acts in training
    assert not np.allclose(first, second)  # a new mask per call


# ---- LoRA forward vs PEFT -------------------------------------------------------------------


def test_lora_forward_equals_peft(tiny_mlx_dir):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    in_dims, out_dims, r, alpha = 24, 40, 4, 8.0
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(out_dims, in_dims)).astype(np.float32)
    lora_a = rng.normal(size=(r, in_dims)).astype(np.float32)  # PEFT layout [r, in]
    lora_b = rng.normal(size=(out_dims, r)).astype(np.float32)  # [out, r]
    x = rng.normal(size=(3, in_dims)).astype(np.float32)

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv_proj = torch.nn.Linear(in_dims, out_dims, bias=False)

        def forward(self, x):
            return self.qkv_proj(x)

    base = Wrapper()
    base.qkv_proj.weight.data = torch.from_numpy(weight)
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.1, target_modules=["qkv_proj"])
    peft_model = peft.get_peft_model(base, config).eval()
    layer = peft_model.base_model.model.qkv_proj
    layer.lora_A["default"].weight.data = torch.from_numpy(lora_a)
    layer.lora_B["default"].weight.data = torch.from_numpy(lora_b)
    with torch.no_grad():
        expected = peft_model(torch.from_numpy(x)).numpy()

    linear = nn.Linear(in_dims, out_dims, bias=False)
    linear.weight = mx.array(weight)
    ours = LoRALinear(linear, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.1))
    ours.lora_a, ours.lora_b = mx.array(lora_a.T), mx.array(lora_b.T)
    ours.eval()
    np.testing.assert_allclose(np.array(ours(mx.array(x))), expected, rtol=1e-4, atol=1e-4)
    formula = x @ weight.T + (alpha / r) * (x @ lora_a.T @ lora_b.T)
    np.testing.assert_allclose(expected, formula, rtol=1e-4, atol=1e-4)


# ---- schedule and eval subset ---------------------------------------------------------------


def test_learning_rate_follows_torch_linear_lr_as_the_seed_stepped_it():
    torch = pytest.importorskip("torch")
    total, base = 7, 1e-4
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=base)
    sched = torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.1, total_iters=total)
    torch_lrs = []
    for _ in range(total):
        torch_lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # The trainer logs the rate the optimizer applied: read back after each update.
    optimizer = make_optimizer(TrainConfig(learning_rate=base), total)
    params = {"w": mx.zeros((2,))}
    applied = []
    for _ in range(total):
        params = optimizer.apply_gradients({"w": mx.ones((2,))}, params)
        applied.append(optimizer.learning_rate.item())
    np.testing.assert_allclose(applied, torch_lrs, rtol=1e-6)


def test_eval_subset_keeps_calls_and_nocalls():
    rows = [{"kind": "call", "i": i} for i in range(40)] + [
        {"kind": "nocall", "i": i} for i in range(12)
    ]
    subset = eval_subset(rows, 13)
    kinds = [r["kind"] for r in subset]
    assert len(subset) == 13 and kinds.count("call") == 10 and kinds.count("nocall") == 3
    assert eval_subset(rows, 2) == [rows[0], rows[40]]
    assert eval_subset(rows, None) == rows
