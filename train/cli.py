"""`mlx-plamo train`: every TrainConfig setting as an option, plus `--config FILE` (YAML).

Precedence: a flag given on the command line > the YAML file > the default. Options are
generated from the dataclass, so the help text, the YAML keys and the MLflow params agree.
"""

from __future__ import annotations

import json
import typing
from dataclasses import MISSING, asdict, fields
from pathlib import Path
from typing import Any

import click
import yaml
from click.core import ParameterSource

from mlx_plamo3.errors import USER_ERRORS
from mlx_plamo3.messages import model_option, next_step, quoted
from train.config import ConfigError, TrainConfig, base_type, coerce, load_yaml_config, merge_config
from train.trainer import memory_plan, train

# Short spellings besides the generated `--<field-name>`.
ALIASES = {
    "learning_rate": ["--lr"],
    "lora_r": ["--rank"],
    "grad_accum": ["--gradient-accumulation"],
}


def _shown_default(f: Any) -> str | None:
    value = f.default_factory() if f.default is MISSING else f.default
    if value is None:
        return None
    if isinstance(value, list):
        return ",".join(value)
    return str(value)


def config_options(command: Any) -> Any:
    """Decorate `command` with one option per TrainConfig field (defaults None: unset)."""
    types = typing.get_type_hints(TrainConfig)
    for f in reversed(fields(TrainConfig)):
        kind, _ = base_type(types[f.name])
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata["help"]
        shown = _shown_default(f)
        if kind is bool:
            names = [f"{flag}/--no-{f.name.replace('_', '-')}"]
            if f.default is not None:
                help_text += f"  [default: {'on' if f.default else 'off'}]"
            option = click.option(*names, f.name, default=None, help=help_text)
        else:
            click_type: Any = {int: int, float: float}.get(kind, str)
            if "choices" in f.metadata:
                click_type = click.Choice(f.metadata["choices"])
            if shown is not None:
                help_text += f"  [default: {shown}]"
            option = click.option(
                flag,
                *ALIASES.get(f.name, []),
                f.name,
                type=click_type,
                default=None,
                help=help_text,
            )
        command = option(command)
    return command


def flag_values(ctx: click.Context, params: dict[str, Any]) -> dict[str, Any]:
    """The settings given on the command line, typed like the YAML ones."""
    types = typing.get_type_hints(TrainConfig)
    out = {}
    for f in fields(TrainConfig):
        if ctx.get_parameter_source(f.name) != ParameterSource.COMMANDLINE:
            continue
        out[f.name] = coerce(f"--{f.name.replace('_', '-')}", params[f.name], types[f.name])
    return out


def build_config(
    ctx: click.Context, config_file: Path | None, params: dict[str, Any]
) -> TrainConfig:
    file_values = load_yaml_config(config_file) if config_file else {}
    return merge_config(file_values, flag_values(ctx, params))


@click.command(name="train", context_settings={"show_default": False})
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="YAML file of settings (keys as the option names, dashes or underscores); flags "
    "given on the command line override it.",
)
@click.option("--print-config", is_flag=True, help="Print the merged settings as YAML and exit.")
@click.option(
    "--plan",
    "plan_only",
    is_flag=True,
    help="Print the memory plan (predicted peak, budget, chosen batching) and exit without "
    "training; needs only the model's config.json and tokenizer files, no weights.",
)
@click.option("--json", "as_json", is_flag=True, help="With --plan: print the plan as JSON.")
@config_options
@click.pass_context
def train_command(
    ctx: click.Context,
    config_file: Path | None,
    print_config: bool,
    plan_only: bool,
    as_json: bool,
    **params: Any,
) -> None:
    """Train the tool-calling LoRA (the study's recipe by default) on a built dataset.

    \b
    Defaults: LoRA r=16, alpha=32 (scale alpha/r), dropout 0.05 on qkv_proj, o_proj,
    gate_up_proj and down_proj of every layer; AdamW lr 1e-4 decaying linearly to 0.1x,
    8 examples per optimizer step, gradient clipping at 1.0, 1 epoch, examples over 768
    tokens dropped; loss on the assistant turns only. Tracked in MLflow (experiment
    plamo3-tool-calling), checkpoints with the frozen eval every 50 steps.

    \b
    Memory: before step 1 the trainer predicts the step's peak memory and picks the fastest
    pass size, packing and gradient checkpointing that fit the budget (--memory-limit, else
    what MLX may use on this device); settings you give win. --plan shows the plan only.
    """

    try:
        config = build_config(ctx, config_file, params)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None
    if print_config:
        resolved = asdict(config.with_resolved_paths())
        click.echo(yaml.safe_dump(resolved, sort_keys=False), nl=False)
        return
    if as_json and not plan_only:
        raise click.UsageError("--json goes with --plan")
    if plan_only:
        try:
            plan = memory_plan(config, log=(lambda message: None) if as_json else click.echo)
        except USER_ERRORS as exc:
            raise click.ClickException(str(exc)) from None
        if as_json:
            click.echo(json.dumps(plan.to_dict(), indent=2))
        else:
            click.echo(next_step("the same `mlx-plamo train` command without --plan"))
        return
    try:
        result = train(config)
    except USER_ERRORS as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"done: {result.steps}/{result.total_steps} steps, adapter in {result.adapter_dir}"
        + (f", MLflow run {result.run_id}" if result.run_id else "")
    )
    data = "" if config.data == "v2" else f" --data {quoted(config.data)}"
    click.echo(
        next_step(
            f"mlx-plamo eval --adapter {quoted(result.adapter_dir)}{model_option(config.model)}"
            + data
        )
    )
