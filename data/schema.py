"""The parsed form every source format is turned into, and the label taxonomy of the audit."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mlx_plamo3.errors import PlamoError

# The two kinds of dataset and eval rows: the gold answer is a tool call, or it is not.
ROW_KINDS: tuple[str, ...] = ("call", "nocall")

# Labels of a parsed conversation (rows that list at least one tool):
CALL = "call"  # the first assistant reply is a function call
DEFERRED_CALL = "deferred_call"  # first reply is prose, a later assistant turn calls (trap 2)
NONSTANDARD_CALL = "nonstandard_call"  # no <functioncall>, but a call in glaive's "AI to=" form
STRICT_NOCALL = "strict_nocall"  # no function call anywhere in the conversation
NO_TOOLS = "no_tools"  # the system message lists no tools: general chat, outside both recipes
LABELS = (CALL, DEFERRED_CALL, NONSTANDARD_CALL, STRICT_NOCALL, NO_TOOLS)

USER = "user"
ASSISTANT = "assistant"
FUNCTION_RESPONSE = "function_response"


class ParseError(PlamoError, ValueError):
    """A source row that cannot be used; `reason` is the audit's key for it."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Turn:
    role: str
    content: str
    call: ToolCall | None = None
    nonstandard_call: bool = False


@dataclass(frozen=True, slots=True)
class Conversation:
    """A parsed source row: the tool text of its system message, its tools and its turns."""

    tool_text: str
    tools: list[dict[str, Any]]
    turns: list[Turn]
    source_format: str = "glaive"


@dataclass(frozen=True, slots=True)
class Candidate:
    """What the recipes need from one conversation: its first exchange and its label, and its
    turns from the first user turn on only when the recipe needs them (v3).

    Keeping only the first exchange otherwise keeps a 113k-row build small in memory."""

    index: int  # position in the source stream, for stable ordering and error messages
    query: str
    key: str  # normalised query, the dedup and leakage key
    reply: str  # the first assistant reply, as text (a call rendered as the study's JSON)
    call: ToolCall | None  # the first reply's call, if it is one
    label: str
    tool_text: str
    tools: list[dict[str, Any]] = field(default_factory=list)
    turns: tuple[Turn, ...] = ()

    @property
    def tool_names(self) -> set[str]:
        return {str(tool.get("name")) for tool in self.tools if isinstance(tool, dict)}
