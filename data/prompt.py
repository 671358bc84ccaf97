"""The study's prompt and target format, defined once: the builder, the trainer and the eval
harness all render prompts through these functions, so train and eval prompts cannot drift."""

from __future__ import annotations

import json
from typing import Any

SYSTEM_PROMPT_PREFIX = (
    "You are a helpful assistant with access to the following tools. When the user's request "
    'requires a tool, respond with ONLY a JSON object {"name": <function-name>, "arguments": '
    "<args-object>}. If no tool is needed, answer normally.\nTools:\n"
)

# glaive puts two newlines between the tool objects of one system message.
TOOL_SEPARATOR = "\n\n"


def build_system_prompt(tool_text: str) -> str:
    """The study's system prompt: the fixed instruction followed by the tool JSON text."""
    return SYSTEM_PROMPT_PREFIX + tool_text


def render_tools(tools: list[dict[str, Any]]) -> str:
    """Tool schemas as glaive writes them: each object indented by 4, blank line between."""
    return TOOL_SEPARATOR.join(json.dumps(tool, indent=4) for tool in tools)


def example_row(
    tool_text: str, query: str, reply: str, kind: str, tools: list[dict[str, Any]]
) -> dict[str, Any]:
    """One training/eval row in the study's three-message format."""
    return {
        "messages": [
            {"role": "system", "content": build_system_prompt(tool_text)},
            {"role": "user", "content": query},
            {"role": "assistant", "content": reply},
        ],
        "kind": kind,
        "tools": tools,
    }
