"""Labelling a parsed conversation (trap 2): the first assistant reply decides the study's naive
label, the whole conversation decides the strict one."""

from __future__ import annotations

from data.call_format import call_text
from data.leakage import normalise_query
from data.schema import (
    ASSISTANT,
    CALL,
    DEFERRED_CALL,
    NO_TOOLS,
    NONSTANDARD_CALL,
    STRICT_NOCALL,
    USER,
    Candidate,
    Conversation,
    ParseError,
    Turn,
)


def first_exchange(turns: list[Turn]) -> tuple[int, int]:
    """Indices of the first user turn and of the first assistant reply after it."""
    user = next((i for i, turn in enumerate(turns) if turn.role == USER), None)
    if user is None:
        raise ParseError("no_user_turn", "conversation has no user turn")
    if not turns[user].content.strip():
        raise ParseError("empty_query", "the first user turn is empty")
    reply = next((i for i in range(user + 1, len(turns)) if turns[i].role == ASSISTANT), None)
    if reply is None:
        raise ParseError("no_assistant_reply", "no assistant turn after the first user turn")
    if turns[reply].call is None and not turns[reply].content.strip():
        raise ParseError("empty_reply", "the first assistant reply is empty")
    return user, reply


def classify(conversation: Conversation, reply: int) -> str:
    """One of the labels in `data.schema`, given the index of the first assistant reply."""
    turns = conversation.turns
    if not conversation.tools:
        return NO_TOOLS
    if turns[reply].call is not None:
        return CALL
    if any(turn.call is not None for turn in turns[reply + 1 :]):
        return DEFERRED_CALL
    if any(turn.nonstandard_call for turn in turns):
        return NONSTANDARD_CALL
    return STRICT_NOCALL


def to_candidate(conversation: Conversation, index: int, keep_turns: bool = False) -> Candidate:
    """The first exchange of a conversation with its label (and, with `keep_turns`, its turns
    from the first user turn on); raises ParseError if there is none."""
    user, reply = first_exchange(conversation.turns)
    query = conversation.turns[user].content
    first = conversation.turns[reply]
    return Candidate(
        index=index,
        query=query,
        key=normalise_query(query),
        reply=call_text(first.call.name, first.call.arguments) if first.call else first.content,
        call=first.call,
        label=classify(conversation, reply),
        tool_text=conversation.tool_text,
        tools=conversation.tools,
        turns=tuple(conversation.turns[user:]) if keep_turns else (),
    )
