"""Command-line entry points of the convert stage: `python -m convert` (= `mlx-plamo convert`)
and `mlx-plamo tiny`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from convert.convert import convert_checkpoint
from convert.tiny import TINY_CONFIG, read_corpus_words, write_tiny_checkpoint
from mlx_plamo3.errors import USER_ERRORS
from mlx_plamo3.loading import DTYPES
from mlx_plamo3.messages import model_option, next_step, quoted
from mlx_plamo3.model import ModelArgs


@click.command(name="convert", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--hf-path",
    required=True,
    help="Local checkpoint directory, or a Hugging Face Hub id such as "
    "pfnet/plamo-3-nict-2b-base (downloaded with huggingface_hub).",
)
@click.option(
    "--mlx-path",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output directory for the MLX model.",
)
@click.option(
    "--dtype",
    type=click.Choice(sorted(DTYPES)),
    default="bfloat16",
    show_default=True,
    help="Data type of the saved weights (before any quantization).",
)
@click.option("--quantize", is_flag=True, help="Quantize linear and embedding weights.")
@click.option(
    "--q-bits",
    type=click.Choice(["4", "8"]),
    default="4",
    show_default=True,
    help="Bits per weight when quantizing.",
)
@click.option(
    "--q-group-size",
    type=click.Choice(["32", "64", "128"]),
    default="64",
    show_default=True,
    help="Weights per quantization group (a layer whose input width does not divide is kept).",
)
@click.option("--revision", default=None, help="Hub revision (branch, tag or commit) of --hf-path.")
@click.option("--force", is_flag=True, help="Replace an existing model in --mlx-path.")
def convert_command(
    hf_path: str,
    mlx_path: Path,
    dtype: str,
    quantize: bool,
    q_bits: str,
    q_group_size: str,
    revision: str | None,
    force: bool,
) -> None:
    """Convert a PLaMo 3 checkpoint (safetensors) to an MLX model directory.

    Every key and shape is checked before anything is written; the output appears only once
    it is complete, so an interrupted conversion leaves any earlier output intact.
    """
    try:
        out = convert_checkpoint(
            hf_path,
            mlx_path,
            dtype=dtype,
            quantize=quantize,
            q_bits=int(q_bits),
            q_group_size=int(q_group_size),
            force=force,
            revision=revision,
        )
    except USER_ERRORS as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote MLX model to {out}")
    click.echo(
        next_step(
            f"mlx-plamo generate --model {quoted(out)} --prompt Hello",
            f"mlx-plamo data build --recipe v2, then mlx-plamo train{model_option(out)}",
        )
    )


def size_option(flag: str, key: str, what: str) -> Callable[[Callable], Callable]:
    return click.option(
        flag,
        key,
        type=click.IntRange(min=1),
        default=TINY_CONFIG[key],
        show_default=True,
        help=what,
    )


@click.command(name="tiny", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Random seed (an integer >= 0); same seed, same bytes.",
)
@size_option("--hidden-size", "hidden_size", "Width of the residual stream.")
@size_option("--layers", "num_hidden_layers", "Decoder layers.")
@size_option("--heads", "num_attention_heads", "Query heads.")
@size_option("--kv-heads", "num_key_value_heads", "Key/value heads (must divide --heads).")
@size_option("--head-dim", "head_dim", "Width of one head (even, for RoPE).")
@size_option("--intermediate-size", "intermediate_size", "Width of the MLP.")
@size_option("--window", "window_size", "Sliding-window length of the local layers.")
@click.option(
    "--vocab-corpus",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="A JSON or JSON-lines file (e.g. data/samples/llamafactory_glaive_toolcall_en_demo.json)"
    " whose most frequent words join the vocabulary as whole pieces, as a tokenizer trained on "
    "it would have them. Without it the vocabulary is the fixed 999-piece list.",
)
@click.option(
    "--vocab-words",
    type=click.IntRange(min=1),
    default=1500,
    show_default=True,
    help="How many of --vocab-corpus's words to add (those seen twice or more).",
)
@click.option("--force", is_flag=True, help="Replace OUT if an earlier `tiny` wrote it.")
def tiny_command(
    out: Path,
    seed: int,
    vocab_corpus: Path | None,
    vocab_words: int,
    force: bool,
    **sizes: int,
) -> None:
    """Write a small random PLaMo 3 checkpoint to OUT in Hugging Face layout.

    By default it has 4 layers (3 sliding over a 16-token window, 1 full), tied embeddings,
    the real tokenizer file format with a small vocabulary, and the chat template. Its outputs
    mean nothing; it exists so that every stage can run offline in seconds.
    """
    try:
        ModelArgs.from_dict({**TINY_CONFIG, "vocab_size": 1, **sizes}, source="the sizes given")
        corpus = read_corpus_words(vocab_corpus, vocab_words) if vocab_corpus else ()
        write_tiny_checkpoint(out, seed=seed, force=force, corpus=corpus, **sizes)
    except USER_ERRORS as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote tiny PLaMo 3 checkpoint to {out}")
    click.echo(next_step(f"python -m convert --hf-path {quoted(out)} --mlx-path <mlx model dir>"))
