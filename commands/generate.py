"""`mlx-plamo generate`: one reply from a prompt or a chat, streamed to the terminal.

A --messages file is checked before the model loads (`read_messages`: its structure, and its
roles and contents by the chat template's own rule), errors naming the file and the message
index. --raw sends --prompt without the template and is refused with --messages.
--seed is what `mx.random.key` takes: an integer in [0, MAX_SEED]."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mlx_plamo3.errors import USER_ERRORS, PlamoError
from mlx_plamo3.generate import (
    MAX_SEED,
    SamplingConfig,
    TextStreamer,
    generate,
    read_messages,
    stop_token_ids,
)
from mlx_plamo3.loading import load
from mlx_plamo3.lora import load_adapter, warn_other_base


@click.command(name="generate", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model_path", required=True, help="MLX or Hugging Face model directory.")
@click.option("--adapter", type=click.Path(exists=True, file_okay=False), help="LoRA adapter dir.")
@click.option("--prompt", help="A user message (rendered with the chat template).")
@click.option(
    "--messages",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='A JSON file holding a list of {"role", "content"} messages.',
)
@click.option(
    "--raw",
    is_flag=True,
    help="Send --prompt as plain text, without the chat template (not with --messages).",
)
@click.option(
    "--max-new-tokens",
    type=click.IntRange(min=1),
    default=SamplingConfig.max_new_tokens,
    show_default=True,
    help="Tokens to generate.",
)
@click.option(
    "--temperature",
    type=click.FloatRange(min=0.0),
    default=0.0,
    show_default=True,
    help="0 decodes greedily.",
)
@click.option(
    "--top-p",
    type=click.FloatRange(min=0.0, max=1.0, min_open=True),
    default=1.0,
    show_default=True,
    help="Nucleus sampling mass, in (0, 1].",
)
@click.option(
    "--seed",
    type=click.IntRange(0, MAX_SEED),
    default=0,
    show_default=True,
    help="Sampling seed, 0 to 2**64-1.",
)
@click.option(
    "--allow-other-base",
    is_flag=True,
    help="Use an adapter trained on another base of the same shape, with a warning "
    "(refused by default: its base weights fingerprint differs).",
)
def generate_command(
    model_path: str,
    adapter: str | None,
    prompt: str | None,
    messages: Path | None,
    raw: bool,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
    allow_other_base: bool,
) -> None:
    """Generate a reply, streaming it to the terminal; stops at <|plamo:tag|> or eos."""
    if (prompt is None) == (messages is None):
        raise click.UsageError("give exactly one of --prompt and --messages")
    if raw and messages is not None:
        raise click.UsageError(
            "--raw goes with --prompt (plain text, no chat template); a --messages chat is "
            "always rendered with the chat template"
        )
    try:
        chat = read_messages(messages) if messages is not None else None
        model, tokenizer = load(model_path)
        if adapter:
            load_adapter(model, adapter, warn_other_base(allow_other_base), model_path)
            model.eval()
        if chat is not None:
            ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True)
        elif raw:
            ids = tokenizer.encode(prompt)
        else:
            ids = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True
            )
    except USER_ERRORS as exc:
        raise click.ClickException(str(exc)) from None
    streamer = TextStreamer(tokenizer.decode, lambda s: (sys.stdout.write(s), sys.stdout.flush()))
    sampling = SamplingConfig(max_new_tokens, temperature, top_p, seed)
    try:
        generate(
            model,
            [ids],
            stop_token_ids(tokenizer),
            sampling,
            pad_id=tokenizer.pad_token_id or 0,
            context_length=model.args.max_position_embeddings,
            on_token=streamer,
        )
    except PlamoError as exc:
        raise click.ClickException(str(exc)) from None
    streamer.finish()
    sys.stdout.write("\n")
