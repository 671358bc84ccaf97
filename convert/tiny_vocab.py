"""A small but real-format PLaMo 3 tokenizer for tiny test checkpoints.

Written files: `tokenizer.jsonl` (PFN's `[piece, score, kind]` rows), `tokenizer_config.json`
(the keys the real checkpoint's config carries, as far as public sources show; readable without
remote code) and `chat_template.jinja` (our reconstruction of the official template).

Ids follow the real vocabulary where public sources pin them: unk 0, bos 1, eos 2, pad 3
(mlx-lm's PLaMo 3 tokenizer fixture; bos 1 / eos 2 also in Plamo3Config's defaults),
`<|plamo:tag|>` 16, `<|plamo:msg|>` 19, `<|plamo:constrain|>` 31 (vLLM's PLaMo 3 parser tests).
`<|plamo:op|>` at 4 is PLaMo 2's id (llama.cpp's converter) and unconfirmed for PLaMo 3; the ids
of key, val, choice and fim_* are not public, so those sit in free control slots. Scores are
made up but shaped like a unigram model's log-probabilities: whole words beat their letters.
Everything is deterministic: same code, same bytes.

A corpus vocabulary (`corpus_words`, `tiny --vocab-corpus`) adds a corpus's most frequent words
after the built-in pieces, each with and without its leading space and scored by frequency,
as a unigram tokenizer trained on that text would have them. The demo's base uses one, so that
a tool name such as `generate_random_color` is five pieces rather than a run of letters.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mlx_plamo3.chat_template import TEMPLATE_FILE, default_chat_template
from mlx_plamo3.io import atomic_write_json, atomic_write_text
from mlx_plamo3.tokenizer import CONFIG_FILE, VOCAB_FILE

CONTROL_SLOTS = 32
PINNED_CONTROLS = {
    0: ("<|plamo:unk|>", "UNKNOWN"),
    1: ("<|plamo:bos|>", "CONTROL"),
    2: ("<|plamo:eos|>", "CONTROL"),
    3: ("<|plamo:pad|>", "CONTROL"),
    4: ("<|plamo:op|>", "CONTROL"),
    16: ("<|plamo:tag|>", "CONTROL"),
    19: ("<|plamo:msg|>", "CONTROL"),
    31: ("<|plamo:constrain|>", "CONTROL"),
}
# The study's other undocumented controls; their real ids are unknown.
FREE_CONTROLS = (
    "<|plamo:key|>",
    "<|plamo:val|>",
    "<|plamo:choice|>",
    "<|plamo:fim_prefix|>",
    "<|plamo:fim_suffix|>",
    "<|plamo:fim_middle|>",
)


def _words(text: str) -> list[str]:
    return text.split()


# Common English words, most frequent first (rank sets the score), then chat and tool-call words.
WORDS = _words("""
the of and to a in is it you that he was for on are with as I his they be at one have this
from or had by not word but what some we can out other were all there when up use your how
said an each she which do their time if will way about many then them write would like so
these her long make thing see him two has look more day could go come did number sound no
most people my over know water than call first who may down side been now find any new work
part take get place made live where after back little only round man year came show every
good me give our under name very through just form sentence great think say help low line
differ turn cause much mean before move right boy old too same tell does set three want air
well also play small end put home read hand port large spell add even land here must big
high such follow act why ask men change went light kind off need house picture try us again
animal point mother world near build self earth father weather today location city please
thanks sure let calculate random number password generate length email send message stock
price movie book title author amount bill tip percentage currency convert distance date age
birth search news recipe ingredients translate text language quote event schedule meeting
time zone order product discount total tax loan interest rate payment monthly value result
function call arguments description parameters properties type string integer object array
required boolean enum items minimum maximum default format true false null system user
assistant tool
""")
CAPITALIZED = ["The", "I", "What", "Can", "Please", "Sure", "Hello", "Thanks", "Here", "How"]
SUBWORDS = ["ing", "tion", "ed", "er", "re", "th", "an", "in", "on", "at", "es", "ly", "s"]
SUBWORDS += ["get_", "calculate_", "_id", "_name", "_date", "_price", "_amount", "_number"]
# JSON punctuation as a tool call serializes it, plus PLaMo-style whitespace runs.
PUNCTUATION = [
    '{"',
    '":',
    '": "',
    '", "',
    '"}',
    '"}}',
    '": {"',
    '": [',
    '"]',
    "},",
    "}}",
    '": ',
    ", ",
    ". ",
    "?",
    "!",
    "\n\n",
    "  ",
    "    ",
    "        ",
    "'s",
    "n't",
]
CHARS = [chr(c) for c in range(32, 127)] + ["\n", "\t"]


WORD_PATTERN = re.compile(r"[A-Za-z]+")
# Words seen fewer times than this are left to letters, as a unigram trainer would drop them.
MIN_CORPUS_COUNT = 2


def _strings(value: Any) -> Iterator[str]:
    """Every string inside a parsed JSON value (keys too), depth first."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def corpus_words(values: Sequence[Any], limit: int) -> list[tuple[str, float]]:
    """The `limit` most frequent words (runs of ASCII letters) in the strings of parsed JSON
    `values`, seen at least MIN_CORPUS_COUNT times, with their log relative frequency; most
    frequent first, ties by first appearance."""
    counts = Counter(
        word for value in values for text in _strings(value) for word in WORD_PATTERN.findall(text)
    )
    total = sum(counts.values())
    return [
        (word, math.log(count / total))
        for word, count in counts.most_common()
        if count >= MIN_CORPUS_COUNT
    ][:limit]


def tiny_vocab_rows(corpus: Sequence[tuple[str, float]] = ()) -> list[list[object]]:
    """Rows of the tiny vocabulary, in id order (the line number is the id); `corpus` words
    (from `corpus_words`) come last, those the built-in pieces already hold skipped."""
    slots: list[list[object] | None] = [None] * CONTROL_SLOTS
    for token_id, (piece, kind) in PINNED_CONTROLS.items():
        slots[token_id] = [piece, 0.0, kind]
    free = iter(FREE_CONTROLS)
    for token_id in range(CONTROL_SLOTS):
        if slots[token_id] is None:
            name = next(free, None)
            if name is not None:
                slots[token_id] = [name, 0.0, "CONTROL"]
            else:
                slots[token_id] = [f"<|plamo:unused_{token_id}|>", 0.0, "UNUSED"]
    rows: list[list[object]] = [row for row in slots if row is not None]
    rows += [[f"<0x{value:02X}>", 0.0, "BYTE"] for value in range(256)]

    scored: dict[str, float] = {}

    def add(piece: str, score: float) -> None:
        scored.setdefault(piece, round(score, 4))

    for rank, word in enumerate(WORDS):
        add(" " + word, -4.0 - 0.01 * rank)
        add(word, -5.0 - 0.01 * rank)
    for rank, word in enumerate(CAPITALIZED):
        add(word, -5.5 - 0.05 * rank)
        add(" " + word, -5.0 - 0.05 * rank)
    for rank, piece in enumerate(SUBWORDS):
        add(piece, -7.0 - 0.05 * rank)
    for rank, piece in enumerate(PUNCTUATION):
        add(piece, -4.5 - 0.05 * rank)
    for rank, char in enumerate(CHARS):
        add(char, -9.0 - 0.01 * rank)
    # A word inside a longer one (generate_random_color's "color") is its own piece, a little
    # less likely.
    for word, log_frequency in corpus:
        add(" " + word, log_frequency - 1.0)
        add(word, log_frequency - 1.5)
    rows += [[piece, score, "NORMAL"] for piece, score in scored.items()]
    return rows


def tiny_tokenizer_config() -> dict[str, object]:
    """tokenizer_config.json with the keys public PLaMo 3 fixtures show, plus transformers'
    `added_tokens_decoder` for the four specials. No `auto_map`: it would point at
    tokenization_plamo.py, which tiny checkpoints do not ship and our loader never runs."""
    specials = {key: PINNED_CONTROLS[i][0] for i, key in enumerate(("unk", "bos", "eos", "pad"))}
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {
            str(i): {
                "content": PINNED_CONTROLS[i][0],
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for i in range(4)
        },
        "bos_token": specials["bos"],
        "clean_up_tokenization_spaces": False,
        "eos_token": specials["eos"],
        "pad_token": specials["pad"],
        "tokenizer_class": "Plamo3Tokenizer",
        "unk_token": specials["unk"],
    }


def write_tiny_tokenizer(out_dir: Path, corpus: Sequence[tuple[str, float]] = ()) -> int:
    """Write tokenizer.jsonl, tokenizer_config.json and chat_template.jinja; returns the
    vocabulary size. `corpus`: extra words, as `tiny_vocab_rows` takes them."""
    out_dir = Path(out_dir)
    rows = tiny_vocab_rows(corpus)
    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    atomic_write_text(out_dir / VOCAB_FILE, lines)
    atomic_write_json(out_dir / CONFIG_FILE, tiny_tokenizer_config())
    atomic_write_text(out_dir / TEMPLATE_FILE, default_chat_template())
    return len(rows)
