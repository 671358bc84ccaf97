"""`python -m convert`: Hugging Face PLaMo 3 checkpoint -> MLX model directory."""

from __future__ import annotations

from pathlib import Path

import click

from convert.convert import DTYPES, convert_checkpoint
from mlx_plamo3.errors import USER_ERRORS
from mlx_plamo3.messages import model_option, next_step, quoted


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


if __name__ == "__main__":
    convert_command()
