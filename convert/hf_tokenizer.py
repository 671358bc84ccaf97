"""A Hugging Face fast tokenizer (`tokenizer.json`) equivalent to PLaMo 3's, for converted dirs.

`mlx_lm.load` and `transformers.AutoTokenizer` need a tokenizer they can build without remote
code. PLaMo's segmentation is a unigram Viterbi search over `tokenizer.jsonl`, so it maps onto
the `tokenizers` Unigram model:

- pieces keep their ids; scores become PFN's integers `round(score * 1e4)` (stored as floats,
  exact in float64), so totals compare exactly as PFN compares them;
- byte fallback: Unigram emits `<0xHH>` pieces for an uncovered character, like PFN; its cost
  is `min(score) - 10`, so the BYTE rows (which PFN never uses to segment) get the floor score
  `-1e7 + 10`, making an uncovered character cost PFN's -1e7;
- the tokenizer's special tokens (bos/eos/unk/pad and additional ones) are special added
  tokens, cut out first as PFN cuts them;
- a Split pre-tokenizer isolates every other `<|plamo:NAME|>` match (and the optional
  `break_around_*` runs, found inside those matches too), so no piece crosses those boundaries;
- no normalizer: pieces hold raw spaces and newlines and the text reaches the model unchanged;
- decoder ByteFallback + Fuse, and a post-processor adding bos/eos as tokenizer_config asks.

The converted tokenizer_config.json is the source's with `tokenizer_class`
"PreTrainedTokenizerFast" and without `auto_map`. For the tiny checkpoints that only renames
the class. For the real checkpoint it drops the pointer to PFN's tokenization_plamo.py
(the file itself is still copied, unreferenced), so every AutoTokenizer load of the converted
dir, with or without trust_remote_code, gives this fast tokenizer. Keeping the pointer as an
opt-in would be worse than it looks: transformers 5 drops add_bos_token/add_eos_token from the
config whenever a tokenizer.json is present, for any tokenizer class, so PFN's tokenizer loaded
from here would silently stop adding bos; and mlx_lm's sharded_load passes
trust_remote_code=True by default. PFN's exact tokenizer stays available from the source
checkpoint, and natively through `mlx_plamo3.tokenizer.Plamo3Tokenizer`, which ignores
tokenizer.json and reads the rewritten config exactly as it read the original.

What is identical to `mlx_plamo3.tokenizer.Plamo3Tokenizer` (and PFN's tokenizer):
- whenever every stretch has one best segmentation, the ids;
- always: the total score of the chosen segmentation, the stretch boundaries, the byte
  fallback, the special tokens, bos/eos; the ids always decode to the input text.
What differs, precisely:
- ties. Among segmentations with the same best total, PFN keeps the longest piece at the
  earliest position (its DP runs right to left); `tokenizers` keeps the longest piece at the
  latest position (its DP runs left to right, backtracking from the end). No per-piece score
  tweak can fix this: three spaces are `"  " + " "` for PFN and `" " + "  "` here, the same
  pieces in another order. In practice it shows on runs of one character, such as the
  spaces of indented JSON.
- vocabularies with a finite score below -999.999 (the floor), non-finite scores, or a BYTE
  piece's text (`<0xHH>`) that the other pieces cannot spell: there the unknown cost or the
  literal BYTE piece differs. Log-probability scores are far above the floor; the writer warns.
- decoding ids whose byte pieces are not valid UTF-8: PFN replaces each maximal invalid
  subsequence with one U+FFFD, ByteFallback replaces every byte of that byte run with one.
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from mlx_plamo3.io import atomic_write_json, atomic_write_text
from mlx_plamo3.tokenizer import (
    CONFIG_FILE,
    CONTROL_PATTERN,
    SCORE_SCALE,
    UNKNOWN_SCORE,
    VOCAB_FILE,
    Plamo3Tokenizer,
    best_segmentation,
    build_trie,
    read_vocab,
)

TOKENIZER_JSON = "tokenizer.json"
FAST_CLASS = "PreTrainedTokenizerFast"
# tokenizers' Unigram charges an uncovered character min(score) - 10 (K_UNK_PENALTY).
UNIGRAM_UNK_PENALTY = 10
FLOOR_SCORE = UNKNOWN_SCORE + UNIGRAM_UNK_PENALTY
_BREAK_KEYS = (
    "break_around_repeated_chars_threshold",
    "break_around_consecutive_spaces_threshold",
)


@lru_cache(maxsize=1)
def python_whitespace_class() -> str:
    """Python's `\\s` as an explicit Oniguruma class body: `tokenizers`' `\\s` leaves out
    U+001C..U+001F, which Python (and so PFN's control pattern) counts as whitespace."""
    return "".join(f"\\x{{{c:X}}}" for c in range(sys.maxunicode + 1) if chr(c).isspace())


def control_regex() -> str:
    """The native `<|plamo:NAME|>` pattern with `\\s` spelled out as Python reads it."""
    assert "\\s" in CONTROL_PATTERN, CONTROL_PATTERN
    return CONTROL_PATTERN.replace("\\s", python_whitespace_class())


def break_regex(repeated_chars: int | None, consecutive_spaces: int | None) -> str | None:
    """The `break_around_*` runs. The Split runs on every pre-token, a `<|plamo:...|>` one
    included, as PFN breaks runs inside those too; special and added tokens are never split."""
    parts = []
    if repeated_chars is not None:
        parts.append(rf"(.)\1{{{repeated_chars - 1},}}")
    if consecutive_spaces is not None:
        parts.append(rf" {{{consecutive_spaces},}}")
    return "|".join(parts) if parts else None


def unigram_scores(rows: Sequence[tuple[str, float, str]]) -> list[tuple[str, float]]:
    """(piece, score) in id order: PFN's integer scores; BYTE and non-finite rows (never in
    PFN's search) sit at the floor that sets the unknown cost. BYTE pieces are spelled
    `<0xHH>` in upper case, the only spelling Unigram's byte fallback looks up."""
    out = []
    for piece, score, kind in rows:
        if kind == "BYTE":
            out.append((piece[:3] + piece[3:5].upper() + ">", float(FLOOR_SCORE)))
        elif math.isfinite(score):
            out.append((piece, float(round(score * SCORE_SCALE))))
        else:
            out.append((piece, float(FLOOR_SCORE)))
    return out


def equivalence_warnings(rows: Sequence[tuple[str, float, str]]) -> list[str]:
    """Reasons the written tokenizer may segment some text differently (beyond ties)."""
    problems = []
    scored = [(p, s) for p, s, k in rows if k != "BYTE"]
    low = [p for p, s in scored if math.isfinite(s) and round(s * SCORE_SCALE) < FLOOR_SCORE]
    if low:
        floor = FLOOR_SCORE / SCORE_SCALE
        problems.append(f"{len(low)} pieces score below {floor} (e.g. {low[0]!r})")
    bad = [p for p, s in scored if not math.isfinite(s)]
    if bad:
        problems.append(f"{len(bad)} pieces have non-finite scores (e.g. {bad[0]!r})")
    texts = [piece for piece, _, kind in rows if kind == "BYTE"]
    totals = pfn_totals(texts, rows)
    literal = [t for t, v in zip(texts, totals, strict=True) if v <= FLOOR_SCORE]
    if literal:
        problems.append(f"the text {literal[0]!r} is cheaper as its BYTE piece than as characters")
    return problems


def pfn_totals(texts: Sequence[str], rows: Sequence[tuple[str, float, str]]) -> list[int]:
    """PFN's best total (integer units) for each text alone.

    Used on the BYTE pieces' texts: a BYTE piece sits at the floor in Unigram, so it can only
    win where its text's PFN total is not above the floor (a text containing it can be cut at
    its ends, so the piece's own text decides). Only pieces made of the texts' characters can
    take part, which keeps the trie small for a large vocabulary."""
    chars = set("".join(texts))
    usable = [row for row in rows if row[2] != "BYTE" and set(row[0]) <= chars]
    trie = build_trie(usable)
    return [
        sum(
            UNKNOWN_SCORE if i < 0 else round(usable[i][1] * SCORE_SCALE)
            for _, i in best_segmentation(text, trie)
        )
        for text in texts
    ]


def unk_id(rows: Sequence[tuple[str, float, str]], native: Plamo3Tokenizer) -> int:
    """Unigram needs an unknown id even with byte fallback (which always succeeds here)."""
    if native.unk_token_id is not None:
        return native.unk_token_id
    return next((i for i, (_, _, kind) in enumerate(rows) if kind == "UNKNOWN"), 0)


def build_fast_tokenizer(
    rows: Sequence[tuple[str, float, str]], config: Mapping[str, Any], native: Plamo3Tokenizer
) -> Tokenizer:
    """The `tokenizers` pipeline equivalent to `native` (see the module docstring)."""
    tokenizer = Tokenizer(
        models.Unigram(unigram_scores(rows), unk_id=unk_id(rows, native), byte_fallback=True)
    )
    splits = [pre_tokenizers.Split(Regex(control_regex()), behavior="isolated")]
    pattern = break_regex(*(config.get(key) for key in _BREAK_KEYS))
    if pattern is not None:
        splits.append(pre_tokenizers.Split(Regex(pattern), behavior="isolated"))
    tokenizer.pre_tokenizer = splits[0] if len(splits) == 1 else pre_tokenizers.Sequence(splits)
    tokenizer.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    specials = native.convert_ids_to_tokens(native.all_special_ids)
    # normalized=False: matched on the raw text, like PFN's special-token split.
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return with_bos_eos(tokenizer, native)


def with_bos_eos(tokenizer: Tokenizer, native: Plamo3Tokenizer) -> Tokenizer:
    """`tokenizer` with a post-processor adding bos/eos around each sequence as add_bos_token /
    add_eos_token say (PFN's build_inputs_with_special_tokens). transformers 5 ignores those
    config keys when a tokenizer.json exists, so this is what decides.

    TemplateProcessing's string form splits on ':', which PLaMo's tokens contain, so the
    template is built around colon-free placeholders and the real tokens are put in its
    serialized form."""
    used = {
        placeholder: token
        for placeholder, token, wanted in (
            ("BOS", native.bos_token, native.add_bos_token),
            ("EOS", native.eos_token, native.add_eos_token),
        )
        if wanted and token is not None
    }
    before = [p for p in used if p == "BOS"]
    after = [p for p in used if p == "EOS"]

    def around(seq: str, type_id: int) -> list[str]:
        return [f"{p}:{type_id}" for p in [*before, seq, *after]]

    tokenizer.post_processor = processors.TemplateProcessing(
        single=around("$A", 0),
        pair=around("$A", 0) + around("$B", 1),
        special_tokens=[(p, native.convert_tokens_to_ids(t)) for p, t in used.items()],
    )
    data = json.loads(tokenizer.to_str())
    data["post_processor"] = _replace_strings(data["post_processor"], used)
    return Tokenizer.from_str(json.dumps(data, ensure_ascii=False))


def _replace_strings(node: Any, mapping: Mapping[str, str]) -> Any:
    """`node` (parsed JSON) with every string key or value found in `mapping` replaced."""
    if isinstance(node, str):
        return mapping.get(node, node)
    if isinstance(node, list):
        return [_replace_strings(item, mapping) for item in node]
    if isinstance(node, dict):
        return {mapping.get(k, k): _replace_strings(v, mapping) for k, v in node.items()}
    return node


def fast_tokenizer_config(config: Mapping[str, Any], native: Plamo3Tokenizer) -> dict[str, Any]:
    """The source tokenizer_config.json, pointed at PreTrainedTokenizerFast, without `auto_map`
    (see the module docstring for why). Resolved specials and add_bos/add_eos are written out
    so that every reader sees the values the native loader uses; no decode-time cleanup."""
    out = dict(config)
    out.pop("auto_map", None)
    out["tokenizer_class"] = FAST_CLASS
    out["clean_up_tokenization_spaces"] = False
    out.update(native.special_tokens_map)
    out["add_bos_token"] = native.add_bos_token
    out["add_eos_token"] = native.add_eos_token
    out["added_tokens_decoder"] = {
        str(token_id): {
            "content": native.convert_ids_to_tokens(token_id),
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for token_id in native.all_special_ids
    }
    return out


def read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def write_hf_tokenizer(source_dir: Path, out_dir: Path) -> Path | None:
    """Write `tokenizer.json` and a fast-tokenizer `tokenizer_config.json` into `out_dir`
    from `source_dir`'s tokenizer.jsonl; None (nothing written) when there is no
    tokenizer.jsonl. Warns when the vocabulary falls outside the exact equivalence."""
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    if not (source_dir / VOCAB_FILE).is_file():
        return None
    rows = read_vocab(source_dir / VOCAB_FILE)
    config = read_config(source_dir / CONFIG_FILE)
    with warnings.catch_warnings():
        # Unknown config keys are the native loader's to report when the model is loaded.
        warnings.simplefilter("ignore")
        native = Plamo3Tokenizer(rows, config, source=str(source_dir))
    for problem in equivalence_warnings(rows):
        warnings.warn(f"{source_dir}: {problem}; {TOKENIZER_JSON} may differ", stacklevel=2)
    tokenizer = build_fast_tokenizer(rows, config, native)
    path = out_dir / TOKENIZER_JSON
    atomic_write_text(path, tokenizer.to_str())
    atomic_write_json(out_dir / CONFIG_FILE, fast_tokenizer_config(config, native))
    return path
