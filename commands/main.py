"""The `mlx-plamo` command line: one group over every stage's commands.

Each command lives with its stage (`<stage>/cli.py`; `python -m convert` is convert's) and is
imported only when it is run, by name from the table below, so `mlx-plamo --help` stays fast
and a command never pays for another's heavy imports (torch, mlflow). This package is the top
layer: it may name every stage."""

from __future__ import annotations

import importlib

import click

# command name -> "module:attribute" of a click command; the stage owns its command.
COMMANDS: dict[str, str] = {
    "tiny": "convert.cli:tiny_command",
    "convert": "convert.cli:convert_command",
    "generate": "commands.generate:generate_command",
    "serve": "commands.serve:serve_command",
    "data": "data.cli:data_group",
    "train": "train.cli:train_command",
    "eval": "eval.cli:eval_command",
    "score": "eval.cli:score_command",
    "export": "adapters.cli:export_command",
    "check-torch": "adapters.cli:check_torch_command",
    "report": "eval.cli:report_command",
}

SHORT_HELP: dict[str, str] = {
    "tiny": "Write a small random PLaMo 3 checkpoint in Hugging Face layout.",
    "convert": "Convert a Hugging Face PLaMo 3 checkpoint to an MLX model directory.",
    "generate": "Generate text from a prompt or a chat, streaming to the terminal.",
    "serve": "Serve an OpenAI-compatible chat endpoint with tool calling.",
    "data": "Build and check the tool-calling datasets.",
    "train": "Train the tool-calling LoRA.",
    "eval": "Run the 52-case tool-calling evaluation.",
    "score": "Rescore an evaluation records file.",
    "export": "Export an adapter to PEFT format (and the Hugging Face Hub).",
    "check-torch": "Rerun the evaluation in PyTorch + PEFT and compare with MLX.",
    "report": "Write the HTML report with figures.",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, SHORT_HELP.get(name, "")) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(
    cls=LazyGroup,
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(package_name="mlx-plamo3")
@click.pass_context
def main(ctx: click.Context) -> None:
    """PLaMo 3 tool calling in MLX: convert, data, train, eval, export, check."""
    if ctx.invoked_subcommand is None:  # bare `mlx-plamo`: the help, and success
        click.echo(ctx.get_help())
