"""The model card (README.md) of an exported adapter: base model, license note, data, recipe,
the eval table with 95% Wilson intervals from the records, and how to load the adapter."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from data.call_format import PLAMO, recorded_call_format
from data.prompt import SYSTEM_PROMPT_PREFIX
from eval.bfcl import is_bfcl_row
from eval.bfcl_scoring import category_cells
from eval.harness import STUDY_MAX_NEW_TOKENS
from eval.records import Records
from eval.scoring import RATE_KEYS, describe_rate, summarize
from mlx_plamo3.loading import names_hub_repo

PLAMO_LICENSE_NAME = "plamo-community-license"
# Where PFN publishes the license of the 2B base (the English text).
PLAMO_2B_LICENSE_LINK = "https://huggingface.co/pfnet/plamo-3-nict-2b-base/blob/main/LICENSE/en"
RATE_TITLES = {
    "parse_rate": "parse",
    "func_name_acc": "func-name",
    "args_exact_match": "args-exact",
    "false_call_rate": "false-call ↓",
}
# Adapter-config keys shown in the recipe section; everything else is listed as metadata.
LORA_KEYS = ("r", "lora_alpha", "lora_dropout", "target_modules")
HIDDEN_KEYS = (
    "format",
    "base_fingerprint",
    "base_model_name_or_path",
    "base_model_revision",
    *LORA_KEYS,
)


def license_link(base_model: str) -> str:
    """PFN's license page for a pfnet PLaMo 3 base (same layout assumed for the family)."""
    if base_model.startswith("pfnet/plamo-3"):
        return f"https://huggingface.co/{base_model}/blob/main/LICENSE/en"
    return PLAMO_2B_LICENSE_LINK


def front_matter(base_model: str, hub_base: bool) -> str:
    lines = [
        "---",
        "license: other",
        f"license_name: {PLAMO_LICENSE_NAME}",
        f"license_link: {license_link(base_model)}",
    ]
    if hub_base:
        lines.append(f"base_model: {base_model}")
    lines += [
        "library_name: peft",
        "pipeline_tag: text-generation",
        "language:",
        "  - en",
        "tags:",
        *(f"  - {tag}" for tag in ("lora", "peft", "mlx", "tool-calling", "plamo", "plamo3")),
        "---",
    ]
    return "\n".join(lines)


def rate_cell(summary: Mapping[str, Any], key: str) -> str:
    k, n = summary["counts"][key]
    return describe_rate(k, n) if n else "–"


def eval_table(records: Sequence[Records], mode: str) -> str:
    """One row per records file: each rate as k/n with its 95% Wilson interval."""
    header = "| condition | " + " | ".join(RATE_TITLES[k] for k in RATE_KEYS) + " |"
    lines = [header, "|---" * (len(RATE_KEYS) + 1) + "|"]
    for record in records:
        summary = summarize(record.rows, mode, condition=record.condition)
        cells = [rate_cell(summary, key) for key in RATE_KEYS]
        lines.append(f"| {record.condition} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bfcl_table(records: Sequence[Records]) -> str:
    """One row per BFCL records file and category: BFCL's accuracy (k/n, 95% Wilson interval),
    the fair accuracy, and the parse or false-call rate."""
    lines = [
        "| condition | category | BFCL accuracy | fair | parse / false call |",
        "|---|---|---|---|---|",
    ]
    for record in records:
        for c in category_cells(record.rows):
            lines.append(
                f"| {record.condition} | {c['category']} | {c['accuracy']} | {c['fair']} | "
                f"{c['other']} |"
            )
    return "\n".join(lines)


def metadata_lines(document: Mapping[str, Any]) -> list[str]:
    lines = []
    for key, value in document.items():
        if key in HIDDEN_KEYS or value in (None, "", {}, []):
            continue
        shown = value if isinstance(value, (str, int, float)) else json.dumps(value)
        lines.append(f"- `{key}`: {shown}")
    return lines


def usage_snippet(base_model: str, repo_or_dir: str, system_prompt_prefix: str) -> str:
    tool = {
        "name": "get_weather",
        "description": "Get the current weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
    }
    return f"""```python
import json

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base = "{base_model}"
# PLaMo 3 is not in transformers itself: the checkpoint's own code loads it.
tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained(base, trust_remote_code=True, dtype=torch.bfloat16)
model = PeftModel.from_pretrained(model, "{repo_or_dir}").eval()

tools = [{json.dumps(tool)}]
system = {json.dumps(system_prompt_prefix)} + "\\n\\n".join(
    json.dumps(t, indent=4) for t in tools
)
messages = [
    {{"role": "system", "content": system}},
    {{"role": "user", "content": "What's the weather in Osaka right now?"}},
]
ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
out = model.generate(ids, max_new_tokens={STUDY_MAX_NEW_TOKENS}, do_sample=False)
print(tokenizer.decode(out[0, ids.shape[1]:]).split("<|plamo:tag|>")[0])
```"""


# The adapter's name in the serving commands of the card (any name works).
SERVED_ADAPTER = "plamo-tools"


def serving_section(base_model: str, repo_or_dir: str, r: int) -> list[str]:
    """How to serve a `plamo`-format adapter with the public PLaMo 3 tool parsers. Flags as
    vLLM's and SGLang's documentation and PFN's plugin README give them."""
    return [
        "## Serving with vLLM or SGLang",
        "",
        "This adapter writes its calls in PLaMo 3's own tool-request markup "
        "(`<|plamo:begin_tool_requests:plamo|>...`), which the `plamo3` tool parsers of vLLM and "
        "SGLang turn into OpenAI `tool_calls` with no glue code. vLLM runs PLaMo 3 through PFN's "
        "plugin (https://github.com/pfnet-research/vllm-plamo3-plugin, `pip install -e .` in a "
        "clone):",
        "",
        "```sh",
        f"vllm serve {base_model} --trust-remote-code \\",
        f"  --enable-lora --lora-modules {SERVED_ADAPTER}={repo_or_dir} --max-lora-rank {r} \\",
        "  --enable-auto-tool-choice --tool-call-parser plamo3",
        "```",
        "",
        f'and requests name the adapter as the model (`"model": "{SERVED_ADAPTER}"`). SGLang:',
        "",
        "```sh",
        f"python -m sglang.launch_server --model-path {base_model} --trust-remote-code \\",
        f"  --enable-lora --lora-paths {SERVED_ADAPTER}={repo_or_dir} \\",
        "  --tool-call-parser plamo3",
        "```",
        "",
        f'with `"model": "{base_model}:{SERVED_ADAPTER}"` in requests. PLaMo 3\'s chat template '
        "does not render `tools`, so send the system prompt below (instruction and tool "
        "schemas) as the system message yourself, and also pass `tools` in the request: the "
        "parsers only return calls to tools the request lists.",
        "",
    ]


def model_card(
    document: Mapping[str, Any],
    peft_config: Mapping[str, Any],
    records: Sequence[Records] = (),
    repo_or_dir: str = "<this repo or directory>",
    system_prompt_prefix: str | None = None,
) -> str:
    """README.md text for an exported adapter.

    `document` is the MLX adapter config (with its training metadata), `peft_config` the
    exported adapter_config.json, `records` the eval records shipped in `eval/`, and
    `system_prompt_prefix` the instruction the tool list follows (default: the project's)."""

    base = peft_config["base_model_name_or_path"]
    revision = peft_config.get("revision")
    r, alpha = peft_config["r"], peft_config["lora_alpha"]
    markup = recorded_call_format(document, "adapter config") == PLAMO
    answer = (
        "a function call in PLaMo 3's own tool-request markup"
        if markup
        else 'a JSON function call `{"name": ..., "arguments": {...}}`'
    )
    parts = [
        front_matter(base, names_hub_repo(base)),
        "",
        "# PLaMo 3 tool-calling LoRA (trained in MLX)",
        "",
        "**Built with PLaMo.** A LoRA adapter that teaches "
        f"`{base}`{f' (revision `{revision}`)' if revision else ''} to answer with {answer} "
        "when one of the tools listed in "
        "the system prompt fits the request, and to answer normally otherwise. It was trained "
        "with mlx-plamo3 on Apple MLX and exported to the Hugging Face PEFT format; "
        "`mlx-plamo check-torch` re-runs the evaluation in PyTorch to show the two agree.",
        "",
        "## Evaluation",
        "",
    ]
    bfcl_records = [r for r in records if any(map(is_bfcl_row, r.rows))]
    records = [r for r in records if r not in bfcl_records]
    if records:
        n_call = sum(r["kind"] == "call" for r in records[0].rows)
        n_nocall = len(records[0].rows) - n_call
        parts += [
            f"{n_call} call and {n_nocall} no-call questions, greedy decoding. Each rate is "
            "k/n with its 95% Wilson interval: with so few questions the interval, not the "
            "point estimate, is the claim. Study scoring (any JSON object with a `name` counts "
            "as a call):",
            "",
            eval_table(records, "study"),
            "",
            "Strict scoring (a call also needs an `arguments` object and a listed tool, so "
            "echoed tool schemas do not count):",
            "",
            eval_table(records, "strict"),
            "",
            "The per-question records (question, gold, prediction) are in `eval/`.",
        ]
    elif not bfcl_records:
        parts.append("No evaluation records were exported with this adapter.")
    if bfcl_records:
        parts += [
            "",
            "### BFCL v4: tools never trained on",
            "",
            "Berkeley Function Calling Leaderboard questions, scored by BFCL's own AST rules "
            "(`fair` also accepts parallel calls in any order):",
            "",
            bfcl_table(bfcl_records),
        ]
    parts += [
        "",
        "## Training",
        "",
        f"- LoRA r={r}, lora_alpha={alpha} (scale {alpha / r:g}), "
        f"dropout {peft_config.get('lora_dropout')}, on "
        + ", ".join(f"`{m}`" for m in peft_config["target_modules"])
        + " in every decoder layer",
        *metadata_lines(document),
        "",
        "## How to load",
        "",
        "The adapter was trained on PLaMo 3's chat template with the system prompt below "
        "followed by the tool schemas as JSON (4-space indent, a blank line between tools); "
        "other prompts are out of distribution. Generation ends at `<|plamo:tag|>`.",
        "",
        usage_snippet(base, repo_or_dir, system_prompt_prefix or SYSTEM_PROMPT_PREFIX),
        "",
        "To check the PyTorch outputs against the MLX eval records question by question:",
        "",
        "```sh",
        f"mlx-plamo check-torch --base {base} --adapter {repo_or_dir} "
        "--results eval/<condition>.json --trust-remote-code",
        "```",
        "",
        *(serving_section(base, repo_or_dir, r) if markup else []),
        "## License",
        "",
        f"This adapter is a derivative of `{base}` and is distributed under the PLaMo "
        f"Community License ({license_link(base)}), not under the project's own license. "
        "Read it before any use: its terms, not this card, decide what you may do with the "
        "adapter, commercial use in particular. The training data "
        "(glaive-function-calling-v2) is Apache-2.0.",
        "",
    ]
    return "\n".join(parts)
