"""Recipe v3: v2's rows plus four classes of conversations v2 leaves out, each row labelled with
its class (`row["class"]`) and every assistant turn supervised (the trainer's mask covers them).

The classes, built from deduplicated conversations that v2's draw did not take and whose user
turns hold no eval question:
- `decline_mined`: glaive's own tool-adjacent declines: a conversation with tools listed, up to
  the first assistant turn that answers a user turn with a refusal in glaive's phrasing
  (`is_decline`), earlier turns (calls, tool results) included.
- `deferred`: the assistant asks for what is missing (a question), the user answers, the
  assistant calls: the first four turns of such a conversation.
- `tool_result`: a call, the tool's response (glaive's `FUNCTION RESPONSE`, a `tool` turn) and
  the assistant's answer using it: the first four turns.
- `decline_built`: a call row whose tool list is replaced by one unrelated tool (no shared name
  word beyond generic verbs), answered with a decline in glaive's own sentence frame
  (`DECLINE_OPENING` ...), which names the asked-for tool's ability and the listed tool's.
v2's own rows are labelled `call`, `nocall`, or `decline_mined` for a strict no-call that
declines. Every call in a v3 row names a listed tool and is rendered in the build's call format.
Each class is drawn with its own seeded `random.Random`, in the order above, so a rebuild is
identical; `DEFAULT_V3_SIZES` are the defaults (`mlx-plamo data build --n-deferred` ...):
v2's 1,718 rows plus 300 of each decline kind (about as many as v2's 318 no-calls, so refusing
a near-miss weighs as much as answering without a tool), 300 deferred calls and 400 tool
results (the call side stays the larger, as in v2)."""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from data.call_format import render_calls
from data.leakage import normalise_query
from data.prompt import build_system_prompt, render_tools
from data.recipes import DEFAULT_SEED, Draw, draw, rng_for
from data.schema import (
    ASSISTANT,
    CALL,
    FUNCTION_RESPONSE,
    NO_TOOLS,
    STRICT_NOCALL,
    USER,
    Candidate,
    Turn,
)

CALL_CLASS = "call"
NOCALL_CLASS = "nocall"
DECLINE_MINED = "decline_mined"
DECLINE_BUILT = "decline_built"
DEFERRED = "deferred"
TOOL_RESULT = "tool_result"
V3_CLASSES = (DECLINE_MINED, DEFERRED, TOOL_RESULT, DECLINE_BUILT)  # drawn in this order
CLASSES = (CALL_CLASS, NOCALL_CLASS, *V3_CLASSES)
DEFAULT_V3_SIZES = {DECLINE_MINED: 300, DEFERRED: 300, TOOL_RESULT: 400, DECLINE_BUILT: 300}
ROW_KIND = {
    CALL_CLASS: "call",
    NOCALL_CLASS: "nocall",
    DECLINE_MINED: "nocall",
    DECLINE_BUILT: "nocall",
    DEFERRED: "call",
    TOOL_RESULT: "call",
}
ROLE = {USER: "user", ASSISTANT: "assistant", FUNCTION_RESPONSE: "tool"}

# How glaive's assistant opens a refusal ("I'm sorry, but I don't have the capability to book
# flights.", "I'm sorry, but I'm unable to assist with that.", ...), read off the bundled rows.
_DECLINE = re.compile(
    r"^(?:I'm sorry|I am sorry|I apologize|Sorry)\b[^.!?]*?\b(?:can't|cannot|can not|unable|"
    r"not able|don't have the (?:capability|ability)|do not have the (?:capability|ability))\b"
)
# glaive's sentence frame for a refusal that names what it can do instead, word for word as in
# real rows ("I'm sorry, but I don't have the capability to book flights. My current function
# allows me to calculate age based on the birth date. If you need help with that, feel free to
# ask!"; tests/test_data_v3.py finds the frame in the bundled rows).
DECLINE_OPENING = "I'm sorry, but I don't have the capability to "
DECLINE_MIDDLE = ". My current function allows me to "
DECLINE_CLOSING = ". If you need help with that, feel free to ask!"
# Verbs that open many unrelated tools' names; sharing only these does not relate two tools.
GENERIC_NAME_WORDS = frozenset(
    {
        *("get", "calculate", "search", "find", "create", "generate", "check", "convert"),
        *("send", "make", "set", "add", "update", "fetch", "lookup", "play", "book"),
    }
)
DONOR_TRIES = 64  # random donor tools tried before a call row is given up as unrelatable


def is_decline(text: str) -> bool:
    """Whether an assistant reply is a refusal in glaive's phrasing."""
    return bool(_DECLINE.match(text.strip()))


def ability(description: Any) -> str:
    """A tool description as the verb phrase the decline frame takes ("Get the current stock
    price." -> "get the current stock price"), '' when it is not one."""
    if not isinstance(description, str):
        return ""
    phrase = description.strip().split(". ")[0].strip().rstrip(".").strip()
    if not phrase[:1].isalpha():
        return ""
    if phrase[1:2].islower():  # keep acronyms such as "BMI ..."
        phrase = phrase[0].lower() + phrase[1:]
    return phrase


def decline_text(asked: str, offered: str) -> str:
    return DECLINE_OPENING + asked + DECLINE_MIDDLE + offered + DECLINE_CLOSING


def name_words(name: str) -> set[str]:
    """A tool name's words beyond generic verbs, cut to 5 letters ("discounted" ~ "discount")."""
    words = {w for w in re.split(r"[_\W]+", name.lower()) if w} - GENERIC_NAME_WORDS
    return {w.rstrip("s")[:5] for w in words}


def listed_calls_only(candidate: Candidate, turns: Sequence[Turn]) -> bool:
    """Every call names a listed tool, and no turn holds glaive's nonstandard call form."""
    names = candidate.tool_names
    return all(
        (turn.call is None or turn.call.name in names) and not turn.nonstandard_call
        for turn in turns
    )


def turn_message(turn: Turn, call_format: str) -> dict[str, str]:
    if turn.call is not None:
        content = render_calls([(turn.call.name, turn.call.arguments)], call_format)
    else:
        content = turn.content
    return {"role": ROLE[turn.role], "content": content}


def conversation_row(
    candidate: Candidate,
    turns: Sequence[Turn],
    klass: str,
    call_format: str,
    tools: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A train row: the study's system prompt over `tools` (default: the candidate's), the
    turns, the row kind of the class and the class itself."""
    tool_text = candidate.tool_text if tools is None else render_tools(tools)
    messages = [{"role": "system", "content": build_system_prompt(tool_text)}]
    messages += [turn_message(turn, call_format) for turn in turns]
    return {
        "messages": messages,
        "kind": ROW_KIND[klass],
        "tools": candidate.tools if tools is None else tools,
        "class": klass,
    }


def decline_end(candidate: Candidate) -> int | None:
    """The number of turns up to glaive's first tool-adjacent decline, or None."""
    if candidate.label == NO_TOOLS:
        return None
    turns = candidate.turns
    for i in range(1, len(turns)):
        turn = turns[i]
        replies = turn.role == ASSISTANT and turn.call is None and turns[i - 1].role == USER
        if replies and is_decline(turn.content):
            return i + 1 if listed_calls_only(candidate, turns[: i + 1]) else None
    return None


def deferred_end(candidate: Candidate) -> int | None:
    """4 when the conversation opens: user, assistant question, user, call; else None."""
    t = candidate.turns
    roles = [turn.role for turn in t[:4]]
    if candidate.label == NO_TOOLS or roles != [USER, ASSISTANT, USER, ASSISTANT]:
        return None
    asks = t[1].call is None and "?" in t[1].content
    return 4 if asks and t[3].call is not None and listed_calls_only(candidate, t[:4]) else None


def tool_result_end(candidate: Candidate) -> int | None:
    """4 when the conversation opens: user, call, tool response, answer; else None."""
    t = candidate.turns
    roles = [turn.role for turn in t[:4]]
    if candidate.label != CALL or roles != [USER, ASSISTANT, FUNCTION_RESPONSE, ASSISTANT]:
        return None
    answers = t[3].call is None and bool(t[3].content.strip()) and not t[3].nonstandard_call
    return 4 if answers and listed_calls_only(candidate, t[:4]) else None


def built_decline_source(candidate: Candidate) -> str:
    """The ability of the tool a v2-style call row calls ('' if it has none or is no such row)."""
    if candidate.label != CALL or candidate.call is None:
        return ""
    called = [t for t in candidate.tools if t.get("name") == candidate.call.name]
    return ability(called[0].get("description")) if called else ""


def donor_tools(candidates: Sequence[Candidate]) -> list[dict[str, Any]]:
    """Every distinct tool (by name, first seen) with an ability, sorted by name."""
    tools: dict[str, dict[str, Any]] = {}
    for candidate in candidates:
        for tool in candidate.tools:
            name = tool.get("name")
            if isinstance(name, str) and name not in tools and ability(tool.get("description")):
                tools[name] = tool
    return [tools[name] for name in sorted(tools)]


def unrelated_donor(
    candidate: Candidate, donors: Sequence[dict[str, Any]], rng: random.Random
) -> dict[str, Any] | None:
    """A donor tool sharing no name word with any of the candidate's tools, or None."""
    taken = set().union(*(name_words(name) for name in candidate.tool_names))
    for _ in range(min(DONOR_TRIES, len(donors))):
        donor = rng.choice(donors)
        if donor["name"] not in candidate.tool_names and not name_words(donor["name"]) & taken:
            return donor
    return None


ClassEnd = Callable[[Candidate], int | None]
CLASS_ENDS: dict[str, ClassEnd] = {
    DECLINE_MINED: decline_end,
    DEFERRED: deferred_end,
    TOOL_RESULT: tool_result_end,
}


def row_class(candidate: Candidate) -> str:
    """The class of a v2 row drawn from `candidate`."""
    if candidate.label == STRICT_NOCALL:
        return DECLINE_MINED if is_decline(candidate.reply) else NOCALL_CLASS
    return CALL_CLASS


def v3_examples(
    v2: Draw,
    pool: Sequence[Candidate],
    excluded: set[str],
    sizes: dict[str, int],
    call_format: str,
    seed: int = DEFAULT_SEED,
) -> Draw:
    """v2's draw from `pool` (its rows labelled with their class) plus the v3 classes drawn
    from `pool` less v2's candidates and any conversation with a user turn in `excluded`."""
    by_key = {c.key: c for c in pool}
    for row in v2.rows:
        row["class"] = row_class(by_key[normalise_query(row["messages"][1]["content"])])
    used = set(v2.keys)

    def usable(candidate: Candidate) -> bool:
        users = (t.content for t in candidate.turns if t.role == USER)
        return candidate.key not in used and not any(normalise_query(u) in excluded for u in users)

    rows = list(v2.rows)
    requested, available, built = dict(v2.requested), dict(v2.available), dict(v2.built)
    for klass in V3_CLASSES:
        rng = rng_for(seed, f"train-v3-{klass}")
        if klass == DECLINE_BUILT:
            eligible = [c for c in pool if usable(c) and built_decline_source(c)]
            picked, made = list(eligible), []
            rng.shuffle(picked)
            donors = donor_tools(pool)
            for candidate in picked:
                if len(made) == sizes[klass]:
                    break
                donor = unrelated_donor(candidate, donors, rng)
                if donor is None:
                    continue
                asked, offered = built_decline_source(candidate), ability(donor["description"])
                reply = decline_text(asked, offered)
                turns = [candidate.turns[0], Turn(ASSISTANT, reply)]
                made.append(conversation_row(candidate, turns, klass, call_format, [donor]))
                used.add(candidate.key)
            available[klass], built[klass] = len(eligible), len(made)
            rows += made
        else:
            ends = {c.key: CLASS_ENDS[klass](c) for c in pool if usable(c)}
            eligible = [c for c in pool if ends.get(c.key)]
            picked = draw(eligible, sizes[klass], rng)
            rows += [
                conversation_row(c, c.turns[: ends[c.key]], klass, call_format) for c in picked
            ]
            used.update(c.key for c in picked)
            available[klass], built[klass] = len(eligible), len(picked)
        requested[klass] = sizes[klass]
    rng_for(seed, "train-v3-order").shuffle(rows)
    return Draw(
        rows=rows,
        requested=requested,
        available=available,
        built=built,
        keys=used,
        nocall_labels=v2.nocall_labels,
    )


def class_counts(rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Rows per class, every class listed (zeros included) in a fixed order."""
    counts = Counter(row.get("class") for row in rows)
    return {klass: counts[klass] for klass in CLASSES}
