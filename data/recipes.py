"""The recipes: which deduplicated candidates become training (and fresh eval) rows.

- v1 reproduces the study's naive labels (trap 2): the first assistant reply decides, so a
  clarifying question before a later call becomes a "no-call" example.
- v2 keeps only calls in the first reply and strict no-calls (no call anywhere).
- v3 is v2's very draw plus the classes of `data.v3` (declines, deferred calls, tool results).
Calls are rendered in the build's call format (`data.call_format`). Every draw uses its own
`random.Random` seeded from (seed, purpose) so a rebuild is identical."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from data.call_format import DEFAULT_CALL_FORMAT, render_calls
from data.prompt import example_row
from data.schema import CALL, DEFERRED_CALL, NONSTANDARD_CALL, STRICT_NOCALL, Candidate
from mlx_plamo3.errors import InputError

RECIPES = ("v1", "v2", "v3")
DEFAULT_SEED = 42
# (call, no-call) training examples. v2: the study's 1,400 + 318. v1: the study's full v1 had
# 11,182 deduplicated examples with ~45% no-call, i.e. 6,150 call + 5,032 no-call.
# v3 draws v2's rows first, with v2's sizes.
DEFAULT_SIZES: dict[str, tuple[int, int]] = {"v1": (6150, 5032), "v2": (1400, 318)}
DEFAULT_SIZES["v3"] = DEFAULT_SIZES["v2"]
# The recipe whose call/no-call draw a recipe makes (v3 adds its classes to v2's draw).
BASE_RECIPE = {"v1": "v1", "v2": "v2", "v3": "v2"}
FRESH_EVAL_SIZES = (40, 12)  # the frozen eval's shape


def v1_pools(candidates: list[Candidate]) -> tuple[list[Candidate], list[Candidate]]:
    """The study's naive split: a call in the first reply, or not (deferred calls included)."""
    calls = [c for c in candidates if c.label == CALL]
    nocalls = [c for c in candidates if c.label in (DEFERRED_CALL, NONSTANDARD_CALL, STRICT_NOCALL)]
    return calls, nocalls


def v2_pools(candidates: list[Candidate]) -> tuple[list[Candidate], list[Candidate]]:
    """Calls to a listed tool (teaching calls to unlisted tools is the hallucination the study
    saw in its v2 misses), and strict no-calls only."""
    calls = [c for c in candidates if c.label == CALL and c.call and c.call.name in c.tool_names]
    nocalls = [c for c in candidates if c.label == STRICT_NOCALL]
    return calls, nocalls


def pools_for(recipe: str, candidates: list[Candidate]) -> tuple[list[Candidate], list[Candidate]]:
    if recipe == "v1":
        return v1_pools(candidates)
    if recipe in ("v2", "v3"):
        return v2_pools(candidates)
    raise InputError(f"unknown recipe {recipe!r}; expected one of {RECIPES}")


def draw(pool: list[Candidate], n: int, rng: random.Random) -> list[Candidate]:
    """`n` candidates without replacement, or the whole pool when it is smaller."""
    return list(pool) if n >= len(pool) else rng.sample(pool, n)


def rng_for(seed: int, purpose: str) -> random.Random:
    # A str seed is hashed with SHA-512 by `random`, independent of PYTHONHASHSEED.
    return random.Random(f"{seed}:{purpose}")


def to_row(
    candidate: Candidate, kind: str, call_format: str = DEFAULT_CALL_FORMAT
) -> dict[str, Any]:
    reply = candidate.reply
    if candidate.call is not None and call_format != DEFAULT_CALL_FORMAT:
        reply = render_calls([(candidate.call.name, candidate.call.arguments)], call_format)
    return example_row(candidate.tool_text, candidate.query, reply, kind, candidate.tools)


@dataclass
class Draw:
    """A drawn set of call + no-call rows and what was asked for and available."""

    rows: list[dict[str, Any]]
    requested: dict[str, int]
    available: dict[str, int]
    built: dict[str, int]
    keys: set[str] = field(default_factory=set)
    nocall_labels: Counter[str] = field(default_factory=Counter)

    @property
    def shortfall(self) -> dict[str, int]:
        return {
            k: self.requested[k] - self.built[k]
            for k in self.requested
            if self.built[k] < self.requested[k]
        }


def draw_examples(
    calls: list[Candidate],
    nocalls: list[Candidate],
    n_call: int,
    n_nocall: int,
    rng: random.Random,
    call_format: str = DEFAULT_CALL_FORMAT,
) -> Draw:
    """Draw both classes and shuffle them together into rows."""
    picked_calls, picked_nocalls = draw(calls, n_call, rng), draw(nocalls, n_nocall, rng)
    rows = [to_row(c, "call", call_format) for c in picked_calls]
    rows += [to_row(c, "nocall", call_format) for c in picked_nocalls]
    rng.shuffle(rows)
    return Draw(
        rows=rows,
        requested={"call": n_call, "nocall": n_nocall},
        available={"call": len(calls), "nocall": len(nocalls)},
        built={"call": len(picked_calls), "nocall": len(picked_nocalls)},
        keys={c.key for c in picked_calls + picked_nocalls},
        nocall_labels=Counter(c.label for c in picked_nocalls),
    )


def fresh_eval(
    candidates: list[Candidate],
    seed: int,
    sizes: tuple[int, int] = FRESH_EVAL_SIZES,
    call_format: str = DEFAULT_CALL_FORMAT,
) -> Draw:
    """A newly drawn eval of the frozen eval's shape: v2-clean calls and strict no-calls. The
    gold stays in the study's JSON (scoring reads it), whatever the format of the rows."""
    calls, nocalls = v2_pools(candidates)
    rng = rng_for(seed, "fresh-eval")
    result = draw_examples(calls, nocalls, sizes[0], sizes[1], rng, call_format)
    golds = {c.query: c.reply for c in candidates if c.key in result.keys}
    for row in result.rows:
        row["gold"] = golds[row["messages"][1]["content"]]
        row["tools_source"] = "source"
    # Calls first, then no-calls, like the frozen eval.
    result.rows.sort(key=lambda row: row["kind"] != "call")
    return result


def train_examples(
    recipe: str,
    candidates: list[Candidate],
    n_call: int,
    n_nocall: int,
    seed: int,
    call_format: str = DEFAULT_CALL_FORMAT,
) -> Draw:
    """The call/no-call draw of `recipe` (v3: v2's, with v2's seeded purpose)."""
    base = BASE_RECIPE.get(recipe, recipe)
    calls, nocalls = pools_for(base, candidates)
    rng = rng_for(seed, f"train-{base}")
    return draw_examples(calls, nocalls, n_call, n_nocall, rng, call_format)
