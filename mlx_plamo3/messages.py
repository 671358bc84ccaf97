"""Lines every command prints the same way: the next command to run after a success, and
warnings (on stderr, so piped output stays clean)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from mlx_plamo3.paths import default_model_dir


def next_step(*commands: str) -> str:
    """The line a successful command ends with: what to run next (alternatives joined)."""
    return "next: " + "\n  or: ".join(commands)


def quoted(value: str | Path) -> str:
    """A path or value as it must be typed in a shell command."""
    return shlex.quote(str(value))


def print_warning(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def model_option(model: str | Path | None) -> str:
    """` --model M` for a next command, empty when M is the default model folder."""
    if model is None or Path(model).resolve() == default_model_dir().resolve():
        return ""
    return f" --model {quoted(model)}"
