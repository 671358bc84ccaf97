"""Tool-calling datasets from glaive-function-calling-v2: parsing (raw glaive and LLaMA-Factory
sharegpt), the v1/v2/v3 recipes, the two call formats (data.call_format), the frozen eval, the
leakage guard and the label audit.

The trainer and the eval harness use only what is exported here."""

from data.call_format import call_text
from data.leakage import LeakageError, check_no_leak, normalise_query
from data.prompt import SYSTEM_PROMPT_PREFIX, build_system_prompt, render_tools
from data.store import load_eval_rows, load_rows, resolve_dataset

__all__ = [
    "SYSTEM_PROMPT_PREFIX",
    "LeakageError",
    "build_system_prompt",
    "call_text",
    "check_no_leak",
    "load_eval_rows",
    "load_rows",
    "normalise_query",
    "render_tools",
    "resolve_dataset",
]
