"""Pretrain the demo's tiny base on the bundled conversations, so its LoRA has something to teach.

`python -m scripts.pretrain_tiny --model TINY_HF --data DATASET --out DIR`: full-parameter AdamW
in PyTorch on the HF-layout reference model (`mlx_plamo3.torch_reference`), seeded, written as
a new HF-layout checkpoint that `python -m convert` and `check-torch` read like any other.

A random tiny model cannot write an unseen tool's name, so the demo's LoRA had nothing to build
on and every rate stayed at 0%. Two phases give the base what the real one brings:

1. copy: rows of random vocabulary pieces repeated with a random period (8 to 64). Predicting
   the repeats needs an induction mechanism (find the last occurrence of the current piece and
   copy what followed), the skill behind copying a tool name from the prompt. It forms
   suddenly, after a few hundred steps; the phase runs until it has formed (copy accuracy
   COPY_LEARNED over COPY_WINDOW steps) or until `--copy-steps`.
2. conversations: every tool call and every first prose reply of the source conversations,
   rendered with the study's system prompt (`data.prompt`) in the chat template, loss on the
   reply only. Each time a row is drawn, its tools are renamed from the source's own name
   words, and parameters and descriptions are dropped at random (a call loses the dropped
   arguments), so the base must read the name and the parameters from the prompt. Calls are
   written as `{"function_call": {"name": ..., "arguments": ...}}`, the shape of OpenAI's
   legacy message field: the study's parse does not count it as a call, so the base scores 0
   and the LoRA must learn the study's bare object and the end of the turn. Copy rows continue
   alongside, so the mechanism survives.

Conversations with a user turn equal to an eval question (`data.leakage`'s normalisation) are
dropped before phase 2, and the rows are checked again with `check_no_leak`. The eval questions
and their tools are never read otherwise. `pretraining.json` in the output records the
settings, the steps, the losses and the copy accuracy.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from data.leakage import check_no_leak, normalise_query, row_query
from data.prompt import build_system_prompt, render_tools
from data.schema import ASSISTANT, USER, Conversation, ParseError
from data.sources import open_source, parse_row
from data.store import load_eval_rows
from mlx_plamo3.errors import USER_ERRORS, InputError
from mlx_plamo3.io import atomic_directory, atomic_write_json
from mlx_plamo3.loading import INDEX_FILE, shard_name
from mlx_plamo3.messages import next_step, quoted
from mlx_plamo3.tokenizer import Plamo3Tokenizer
from mlx_plamo3.torch_reference import load_reference, sanitize_state

WRITER = "scripts.pretrain_tiny"
RECORD_FILE = "pretraining.json"
# Copy phase: learned once the copy accuracy over the last COPY_WINDOW steps reaches this.
COPY_LEARNED = 0.95
COPY_WINDOW = 20
COPY_ROW_LENGTH = 128
PERIODS = (8, 64)
WARMUP_STEPS = 20
# Conversation draws over --max-length for one batch before the setting is called too small.
MAX_TOO_LONG = 1000
DEFAULT_SOURCE = "data/samples/llamafactory_glaive_toolcall_en_demo.json"


@dataclass(frozen=True)
class Settings:
    copy_steps: int
    copy_batch: int
    copy_lr: float
    steps: int
    batch: int
    lr: float
    max_length: int
    drop_parameters: float
    drop_description: float
    seed: int


@dataclass(frozen=True)
class Exchange:
    """One supervised reply: the tools offered, the user's message, and the reply (a call, or
    prose when `call` is None)."""

    tools: list[dict[str, Any]]
    user: str
    reply: str
    call: dict[str, Any] | None


def exchanges(conversation: Conversation) -> Iterator[Exchange]:
    """Each call answering a user turn, and the first reply when it is prose."""
    turns = conversation.turns
    for index in range(1, len(turns)):
        before, turn = turns[index - 1], turns[index]
        if turn.role != ASSISTANT or before.role != USER:
            continue
        if turn.call is not None:
            call = {"name": turn.call.name, "arguments": turn.call.arguments}
            yield Exchange(conversation.tools, before.content, turn.content, call)
        elif index == 1:
            yield Exchange(conversation.tools, before.content, turn.content, None)


def read_exchanges(sources: Sequence[str], eval_questions: set[str]) -> tuple[list[Exchange], int]:
    """The exchanges of every conversation that lists tools and shares no user turn with the
    eval; with the number of conversations dropped for sharing one."""
    found, dropped = [], 0
    for source in sources:
        _, rows, _ = open_source(source)
        for row in rows:
            if isinstance(row, ParseError):
                continue
            try:
                conversation = parse_row(row)
            except ParseError:
                continue
            if not conversation.tools:
                continue
            users = {normalise_query(t.content) for t in conversation.turns if t.role == USER}
            if users & eval_questions:
                dropped += 1
                continue
            found.extend(exchanges(conversation))
    if not any(exchange.call for exchange in found):
        raise InputError(f"no tool calls found in {', '.join(sources)}")
    return found, dropped


def name_words(exchanges_: Sequence[Exchange]) -> tuple[list[str], list[str]]:
    """The first words and all words of the source's tool names (split on `_`)."""
    names = {tool["name"] for exchange in exchanges_ for tool in exchange.tools}
    heads = sorted({name.split("_")[0] for name in names})
    words = sorted({word for name in names for word in name.split("_")})
    return heads, words


def varied_messages(
    exchange: Exchange, rng: random.Random, words: tuple[list[str], list[str]], settings: Settings
) -> list[dict[str, str]]:
    """The exchange as chat messages, its tools renamed and thinned at random (see module)."""
    heads, parts = words
    tools = json.loads(json.dumps(exchange.tools))
    renamed: dict[str, str] = {}
    kept: dict[str, set[str]] = {}
    for tool in tools:
        new_name = "_".join([rng.choice(heads), *rng.sample(parts, rng.randint(1, 2))])
        renamed[tool["name"]] = tool["name"] = new_name
        if rng.random() < settings.drop_description:
            tool["description"] = ""
        parameters = tool.get("parameters")
        properties = parameters.get("properties") if isinstance(parameters, dict) else None
        if isinstance(properties, dict) and properties and rng.random() < settings.drop_parameters:
            keep = set(rng.sample(sorted(properties), rng.randint(0, len(properties) - 1)))
            parameters["properties"] = {k: v for k, v in properties.items() if k in keep}
            if isinstance(parameters.get("required"), list):
                parameters["required"] = [k for k in parameters["required"] if k in keep]
            kept[new_name] = keep

    def rename(text: str) -> str:
        for old, new in renamed.items():
            text = text.replace(old, new)
        return text

    if exchange.call is None:
        reply = rename(exchange.reply)
    else:
        name = renamed.get(exchange.call["name"], exchange.call["name"])
        arguments = exchange.call["arguments"]
        if name in kept:
            arguments = {k: v for k, v in arguments.items() if k in kept[name]}
        reply = json.dumps({"function_call": {"name": name, "arguments": arguments}})
    return [
        {"role": "system", "content": build_system_prompt(render_tools(tools))},
        {"role": "user", "content": rename(exchange.user)},
        {"role": "assistant", "content": reply},
    ]


def normal_piece_ids(tokenizer: Plamo3Tokenizer, model_dir: Path) -> list[int]:
    """Ids of the vocabulary's NORMAL pieces (the copy rows draw from them)."""
    ids = [i for i in range(len(tokenizer)) if tokenizer.kind(i) == "NORMAL"]
    if len(ids) < PERIODS[1]:
        raise InputError(f"{model_dir}: too few NORMAL vocabulary pieces for copy rows")
    return ids


def copy_rows(
    batch: int, pieces: Sequence[int], bos: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of bos + a random span repeated to COPY_ROW_LENGTH, and the mask of the targets
    that repeat an earlier piece."""
    pool = torch.tensor(pieces)
    rows, masks = [], []
    for _ in range(batch):
        period = int(torch.randint(PERIODS[0], PERIODS[1] + 1, (1,), generator=gen))
        span = pool[torch.randint(len(pool), (period,), generator=gen)]
        repeats = math.ceil(COPY_ROW_LENGTH / period)
        rows.append(torch.cat([torch.tensor([bos]), span.repeat(repeats)[:COPY_ROW_LENGTH]]))
        mask = torch.zeros(COPY_ROW_LENGTH, dtype=torch.bool)
        mask[period:] = True
        masks.append(mask)
    return torch.stack(rows), torch.stack(masks)


def padded(encoded: Sequence[tuple[list[int], list[bool]]], pad: int) -> tuple[torch.Tensor, ...]:
    """Right-padded ids and the mask of supervised targets (the token after each position)."""
    width = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    mask = torch.zeros(len(encoded), width - 1, dtype=torch.bool)
    for row, (tokens, supervised) in enumerate(encoded):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens) - 1] = torch.tensor(supervised[1:])
    return ids, mask


def masked_loss(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Mean cross-entropy over the masked targets, and their greedy accuracy. Only masked
    positions go through the (tied) output head, the largest matrix of a tiny model."""
    hidden = model.model(model.model.embed_tokens(ids), None, None, None)[:, :-1][mask]
    logits = torch.nn.functional.linear(hidden, model.model.embed_tokens.weight)
    targets = ids[:, 1:][mask]
    accuracy = (logits.argmax(-1) == targets).float().mean().item()
    return torch.nn.functional.cross_entropy(logits, targets), accuracy


def optimizer_for(model: Any, lr: float) -> tuple[torch.optim.Optimizer, Any]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / WARMUP_STEPS)
    )
    return optimizer, schedule


def pretrain(
    model_dir: Path, data: str, sources: Sequence[str], out: Path, settings: Settings, force: bool
) -> dict[str, Any]:
    """Both phases; writes the checkpoint and returns the record written with it."""
    started = time.monotonic()
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    _, eval_rows = load_eval_rows(data)
    eval_questions = {normalise_query(row_query(row)) for row in eval_rows}
    found, dropped = read_exchanges(sources, eval_questions)
    words = name_words(found)
    tokenizer = Plamo3Tokenizer.from_pretrained(model_dir)
    model = load_reference(model_dir)
    model.train()
    pieces = normal_piece_ids(tokenizer, model_dir)
    bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id

    optimizer, schedule = optimizer_for(model, settings.copy_lr)
    recent: list[float] = []
    copy_learned_at = None
    copy_steps_run = 0
    accuracy = 0.0
    bar = tqdm(range(settings.copy_steps), desc="copy", unit="step")
    for step in bar:
        loss, accuracy = masked_loss(model, *copy_rows(settings.copy_batch, pieces, bos, gen))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        copy_steps_run = step + 1
        recent = [*recent[1 - COPY_WINDOW :], accuracy]
        bar.set_postfix(loss=f"{loss.item():.3f}", copy_acc=f"{accuracy:.2f}")
        if len(recent) == COPY_WINDOW and min(recent) >= COPY_LEARNED:
            copy_learned_at = copy_steps_run
            break
    bar.close()

    check_no_leak(({"messages": [{"role": USER, "content": e.user}]} for e in found), eval_rows)
    optimizer, schedule = optimizer_for(model, settings.lr)
    losses = []
    bar = tqdm(range(settings.steps), desc="conversations", unit="step")
    for _ in bar:
        encoded, too_long = [], 0
        while len(encoded) < settings.batch:
            ids, mask = tokenizer.assistant_token_mask(
                varied_messages(rng.choice(found), rng, words, settings)
            )
            if len(ids) <= settings.max_length:
                encoded.append((ids, mask))
            elif (too_long := too_long + 1) == MAX_TOO_LONG:
                raise InputError(
                    f"{MAX_TOO_LONG} draws for one batch were longer than --max-length "
                    f"{settings.max_length} tokens; raise it"
                )
        loss, _ = masked_loss(model, *padded(encoded, pad))
        copy_loss, accuracy = masked_loss(model, *copy_rows(settings.copy_batch, pieces, bos, gen))
        optimizer.zero_grad()
        (loss + copy_loss).backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}", copy_acc=f"{accuracy:.2f}")
    bar.close()

    calls = sum(1 for e in found if e.call is not None)
    record = {
        "writer": WRITER,
        "from": str(model_dir),
        "sources": list(sources),
        "eval": str(data),
        "settings": asdict(settings),
        "exchanges": {"calls": calls, "prose": len(found) - calls},
        "conversations_dropped_as_eval_questions": dropped,
        "copy": {"steps": copy_steps_run, "learned_at": copy_learned_at, "last_accuracy": accuracy},
        "conversations": {
            "first_loss": losses[0] if losses else None,
            "last_loss": sum(losses[-10:]) / len(losses[-10:]) if losses else None,
        },
        "seconds": round(time.monotonic() - started, 1),
    }
    state = sanitize_state(model.config, model.state_dict())
    with atomic_directory(out, WRITER, force=force) as staging:
        for file in model_dir.iterdir():
            weights = file.suffix == ".safetensors" or file.name == INDEX_FILE
            if file.is_file() and not weights and file.name != RECORD_FILE:
                shutil.copy2(file, staging / file.name)
        tensors = {key: value.detach().contiguous() for key, value in state.items()}
        save_file(tensors, str(staging / shard_name(0, 1)), {"format": "pt"})
        atomic_write_json(staging / RECORD_FILE, record)
    return record


DEFAULTS = Settings(
    copy_steps=1200,
    copy_batch=16,
    copy_lr=1e-2,
    steps=400,
    batch=8,
    lr=3e-3,
    max_length=448,
    drop_parameters=0.5,
    drop_description=0.3,
    seed=0,
)
POSITIVE = click.FloatRange(min=0, min_open=True)


def setting_option(name: str, kind: click.ParamType, text: str) -> Any:
    """A `--name` option for one `Settings` field, its default from DEFAULTS."""
    return click.option(
        "--" + name.replace("_", "-"),
        name,
        type=kind,
        default=getattr(DEFAULTS, name),
        show_default=True,
        help=text,
    )


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--model",
    "model_dir",
    required=True,
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="The tiny HF-layout checkpoint to start from (`mlx-plamo tiny`); read, never changed.",
)
@click.option(
    "--data",
    required=True,
    help="Dataset name or directory whose eval.jsonl holds the questions the pretraining must "
    "not see (conversations with any of them are dropped).",
)
@click.option(
    "--source",
    "sources",
    multiple=True,
    default=(DEFAULT_SOURCE,),
    show_default=True,
    help="Conversation file(s) to pretrain on, in any format `data build` reads; repeatable.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output directory: the pretrained checkpoint in the same layout, with pretraining.json.",
)
@setting_option(
    "copy_steps",
    click.IntRange(min=0),
    "Most steps of the copy phase; it stops earlier once copying is learned.",
)
@setting_option("copy_batch", click.IntRange(min=1), "Copy rows per step (in both phases).")
@setting_option("copy_lr", POSITIVE, "Learning rate of the copy phase.")
@setting_option("steps", click.IntRange(min=1), "Steps of the conversation phase.")
@setting_option("batch", click.IntRange(min=1), "Conversation rows per step.")
@setting_option("lr", POSITIVE, "Learning rate of the conversation phase.")
@setting_option(
    "max_length",
    click.IntRange(min=16),
    "Longest conversation row in tokens; longer draws are skipped.",
)
@setting_option(
    "drop_parameters",
    click.FloatRange(0, 1),
    "Chance that a tool loses a random subset of its parameters (and its calls those arguments).",
)
@setting_option(
    "drop_description", click.FloatRange(0, 1), "Chance that a tool's description is emptied."
)
@setting_option("seed", click.IntRange(min=0), "Seed of every random draw.")
@click.option(
    "--force", is_flag=True, help="Replace OUT if an earlier run of this script wrote it."
)
def main(
    model_dir: Path,
    data: str,
    sources: tuple[str, ...],
    out: Path,
    force: bool,
    **options: Any,
) -> None:
    """Pretrain a tiny PLaMo 3 checkpoint on tool-calling conversations (see the module's
    docstring: a copy phase, then the conversations with calls in a shape the study's parse
    does not count)."""
    settings = Settings(**options)
    try:
        record = pretrain(model_dir, data, sources, out, settings, force)
    except USER_ERRORS as exc:
        raise click.ClickException(str(exc)) from None
    copy = record["copy"]
    if copy["learned_at"] is None:
        click.echo(
            f"warning: copying was not learned in {copy['steps']} steps (last accuracy "
            f"{copy['last_accuracy']:.2f}); the base will not write unseen tool names",
            err=True,
        )
    else:
        click.echo(f"copy phase: learned at step {copy['learned_at']}")
    click.echo(
        f"conversation phase: {record['exchanges']['calls']} calls and "
        f"{record['exchanges']['prose']} prose replies "
        f"({record['conversations_dropped_as_eval_questions']} conversations dropped as eval "
        f"questions); loss {record['conversations']['first_loss']:.2f} -> "
        f"{record['conversations']['last_loss']:.2f}"
    )
    click.echo(f"wrote the pretrained checkpoint to {out} in {record['seconds']:.0f}s")
    click.echo(next_step(f"python -m convert --hf-path {quoted(out)} --mlx-path <mlx model dir>"))


if __name__ == "__main__":
    main()
