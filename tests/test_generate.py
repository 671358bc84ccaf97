"""Generation: batching and prefix reuse change nothing; stops and limits hold."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlx_plamo3 import load_model
from mlx_plamo3.generate import (
    PREFILL_PASS_COLUMNS,
    SamplingConfig,
    TextStreamer,
    batch_order,
    common_prefix_length,
    generate,
    prefill_groups,
    prefill_tokens,
    stop_token_ids,
)
from mlx_plamo3.loading import load


@pytest.fixture(scope="module")
def model(tiny_mlx_dir):
    return load_model(tiny_mlx_dir)


def prompts_with_shared_prefix(vocab: int) -> list[list[int]]:
    rng = np.random.default_rng(11)
    prefix = [int(t) for t in rng.integers(4, vocab, 24)]
    return [prefix + [int(t) for t in rng.integers(4, vocab, n)] for n in (3, 17, 1, 9, 30, 5)]


def naive_greedy(model, prompt: list[int], steps: int, stops: set[int]) -> list[int]:
    """Greedy decoding by full forward passes, no cache: the definition being matched."""
    ids, out = list(prompt), []
    for _ in range(steps):
        token = int(mx.argmax(model(mx.array([ids]))[0, -1]))
        if token in stops:
            break
        out.append(token)
        ids.append(token)
    return out


def test_batched_with_prefix_equals_one_at_a_time(model):
    prompts = prompts_with_shared_prefix(model.args.vocab_size)
    greedy = SamplingConfig(max_new_tokens=30)
    alone = [generate(model, [p], set(), greedy, share_prefix=False)[0] for p in prompts]
    batched = generate(model, prompts, set(), greedy, batch_size=4)
    assert batched == alone
    assert alone[0] == naive_greedy(model, prompts[0], 30, set())
    assert len({tuple(o) for o in alone}) > 1, "outputs do not depend on the prompt"


def test_stop_token_ends_a_row_and_is_not_returned(model):
    prompt = prompts_with_shared_prefix(model.args.vocab_size)[1]
    free = generate(model, [prompt], set(), SamplingConfig(max_new_tokens=20))[0]
    stop = free[5]
    first = free.index(stop)
    stopped = generate(model, [prompt], {stop}, SamplingConfig(max_new_tokens=20))[0]
    assert stopped == free[:first]


def test_rows_stop_independently_in_a_batch(model):
    prompts = prompts_with_shared_prefix(model.args.vocab_size)
    free = generate(model, prompts, set(), SamplingConfig(max_new_tokens=15))
    stop = free[0][3]
    stopped = generate(model, prompts, {stop}, SamplingConfig(max_new_tokens=15), batch_size=6)
    for full, cut in zip(free, stopped, strict=True):
        assert cut == (full[: full.index(stop)] if stop in full else full)


def test_sampling_is_seeded(model):
    prompt = prompts_with_shared_prefix(model.args.vocab_size)[2]
    config = SamplingConfig(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=4)
    first = generate(model, [prompt], set(), config)[0]
    assert first == generate(model, [prompt], set(), config)[0]
    assert len(first) == 12


def test_prompt_longer_than_context_is_refused(model):
    with pytest.raises(ValueError, match="exceed the model's context of 20"):
        generate(model, [[5] * 15], set(), SamplingConfig(max_new_tokens=10), context_length=20)


def test_common_prefix_leaves_each_prompt_a_token():
    assert common_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2
    assert common_prefix_length([[1, 2, 3], [1, 5]]) == 1
    assert common_prefix_length([[7], [7, 8]]) == 0


def test_streamer_holds_back_incomplete_characters():
    pieces = {1: b"caf", 2: b"\xc3", 3: b"\xa9!"}
    written: list[str] = []
    streamer = TextStreamer(
        lambda ids: b"".join(pieces[i] for i in ids).decode("utf-8", "replace"), written.append
    )
    for token in (1, 2, 3):
        streamer(0, token)
    assert written == ["caf", "é!"]
    streamer(0, 2)  # a dangling lead byte at the very end is still shown, as U+FFFD
    streamer.finish()
    assert written == ["caf", "é!", "\ufffd"]


def test_generate_cli_streams_the_reply(tiny_mlx_dir, tmp_path):
    import json

    from click.testing import CliRunner

    from commands.main import main as cli_main
    from mlx_plamo3 import load

    model, tokenizer = load(tiny_mlx_dir)
    messages = [{"role": "user", "content": "What is the weather in Tokyo?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    expected = generate(
        model,
        [ids],
        {2, tokenizer.convert_tokens_to_ids("<|plamo:tag|>")},
        SamplingConfig(max_new_tokens=12),
    )[0]
    (tmp_path / "chat.json").write_text(json.dumps(messages))
    runner = CliRunner()
    by_prompt = runner.invoke(
        cli_main,
        [
            "generate",
            "--model",
            str(tiny_mlx_dir),
            "--prompt",
            messages[0]["content"],
            "--max-new-tokens",
            "12",
        ],
    )
    by_file = runner.invoke(
        cli_main,
        [
            "generate",
            "--model",
            str(tiny_mlx_dir),
            "--messages",
            str(tmp_path / "chat.json"),
            "--max-new-tokens",
            "12",
        ],
    )
    assert by_prompt.exit_code == 0, by_prompt.output
    assert by_prompt.output == by_file.output == tokenizer.decode(expected) + "\n"


def test_generate_cli_needs_exactly_one_input(tiny_mlx_dir):
    from click.testing import CliRunner

    from commands.main import main as cli_main

    result = CliRunner().invoke(cli_main, ["generate", "--model", str(tiny_mlx_dir)])
    assert result.exit_code != 0 and "exactly one of --prompt and --messages" in result.output


def test_batches_go_by_shared_prefix_or_by_length_whichever_prefills_less():
    # Two short and two long prompts; each short one shares its first token with a long one.
    prompts = [[1] + [9] * 9, [1], [2] + [9] * 9, [2]]
    by_prefix, by_length = [1, 0, 3, 2], [1, 3, 0, 2]
    passes = PREFILL_PASS_COLUMNS
    # By prefix: a 1-token prompt keeps its token for the rest, so ([1], [1, 9..]) share
    # nothing; one pass padded to 10 beats two passes of 1 and 10; twice.
    assert prefill_tokens(prompts, by_prefix, batch_size=2) == 2 * (passes + 2 * 10)
    # By length: two 1-token prompts, then two 10-token ones.
    assert prefill_tokens(prompts, by_length, batch_size=2) == passes + 2 + passes + 20
    assert batch_order(prompts, batch_size=2) == by_length
    # One tool list, two questions each: sorted, each batch runs its 20 shared tokens once.
    same_tools = [[7] * 20 + [1, 1], [8] * 20 + [1], [7] * 20 + [2], [8] * 20 + [2, 2]]
    assert prefill_tokens(same_tools, [0, 2, 1, 3], batch_size=2) == (20 + passes + 2 * 2) * 2
    assert batch_order(same_tools, batch_size=2) == [0, 2, 1, 3]


def test_prefill_groups_pad_rows_together_only_where_padding_costs_less_than_a_pass():
    assert PREFILL_PASS_COLUMNS == 32  # the figures below assume it
    # 10 and 12 pad together (32 + 2 x 12 < 2 x 32 + 22); 300 runs alone; 990 and 1,000 pad
    # together (32 + 2 x 1,000 < 2 x 32 + 1,990); 300 with either pair would pad hundreds.
    assert prefill_groups([300, 10, 1000, 12, 990]) == [[1, 3], [0], [4, 2]]
    assert prefill_groups([5]) == [[0]]
    assert prefill_groups([]) == []


def test_rows_prefilled_in_groups_continue_exactly_as_alone(tiny_mlx_dir):
    model, tokenizer = load(tiny_mlx_dir)
    stop = stop_token_ids(tokenizer)
    # Lengths far apart, so they prefill in separate groups whose caches are stacked.
    prompts = [
        tokenizer.encode("word " * 90),
        tokenizer.encode("hi"),
        tokenizer.encode("hello there " * 40),
        tokenizer.encode("ok then"),
    ]
    assert len(prefill_groups([len(p) for p in prompts])) > 1
    sampling = SamplingConfig(max_new_tokens=10)
    batched = generate(model, prompts, stop, sampling, batch_size=4, share_prefix=False)
    alone = [generate(model, [p], stop, sampling, batch_size=1)[0] for p in prompts]
    assert batched == alone
