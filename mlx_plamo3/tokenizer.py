"""PLaMo 3's tokenizer, natively: no remote code, no transformers.

A checkpoint's tokenizer is `tokenizer.jsonl` + `tokenizer_config.json` + a chat template. This
module reads the first two and chooses the template text (the checkpoint's chat_template.jinja,
else tokenizer_config.json's `chat_template`, else the packaged fallback); rendering it and the
assistant-token mask are `mlx_plamo3.chat_template`'s, which the chat methods here delegate to.

The vocabulary is `tokenizer.jsonl`, one JSON array `[piece, score, kind, ...]` per line, the
line number (from 0) being the token id. Kinds seen in the family: NORMAL, UNKNOWN, CONTROL,
USER_DEFINED, UNUSED and BYTE; extra columns after the kind exist and carry nothing we need.

Encoding, as PFN's `Plamo3Tokenizer` does it:
1. HF special tokens (bos/eos/unk/pad and any additional ones) are cut out as single ids.
2. Every remaining match of `<|plamo:NAME|>` (NAME: up to 64 characters, no `|`, no
   whitespace) is isolated, and so are runs caught by the optional `break_around_*` thresholds
   of tokenizer_config.json, inside such a match too (PFN finds them after marking the
   matches, so `<|plamo:aaaaaaaa|>` breaks at threshold 8); no piece crosses these boundaries.
3. Each stretch is segmented by dynamic programming over every non-BYTE piece: the split whose
   scores sum highest wins, scores compared after rounding to 1e-4 (PFN keeps them as integers
   of score * 1e4). A character no piece covers costs -1000 and is spelled as the byte pieces
   `<0xXX>` of its UTF-8 encoding. Ties go to the longer piece at the earliest position.
So a `<|plamo:...|>` that is a vocabulary piece comes out as one id, and one that is not (say
`<|plamo:begin_think:plamo|>`) is split into pieces without merging into its neighbours.

Deliberate divergence: PFN marks boundaries with the private-use character U+EE00 and so drops
that character from any input; here it is ordinary text and round-trips.

Decoding concatenates the UTF-8 bytes of the pieces (a BYTE piece is its byte) and decodes with
replacement, so byte sequences split across pieces reassemble and invalid ones become U+FFFD.

Public sources the facts come from (read, not copied):
- PFN's `tokenization_plamo.py` (`Plamo3Tokenizer`, `AhoCorasick`), shipped with the pfnet
  plamo-3 checkpoints, as copied into public repositories (one with an mlx-lm header):
  the jsonl format, the DP and its tie-breaking, the 1e4 score scaling, the unknown cost, the
  byte fallback, the `<|plamo:...|>` isolation pattern, the `break_around_*` options, the
  special-token defaults and add_bos_token/add_eos_token defaulting to false when absent.
- llama.cpp `conversion/plamo.py` (Plamo2Model.set_vocab): the kind names, extra columns.
- mlx-lm `tests/test_tokenizers.py` (test_plamo3_tokenizer_jsonl): tokenizer_config.json keys and
  unk/bos/eos/pad at ids 0-3 in a fixture built to mimic the checkpoint.
- vLLM's PLaMo 3 reasoning/tool parser tests: `<|plamo:tag|>` = 16, `<|plamo:msg|>` = 19,
  `<|plamo:constrain|>` = 31, bos = 1, and `<|plamo:tag|>` is a single token.
- kazukiminemura/plamo3_benchmark (OpenVINO port of plamo-3-nict-8b-base): it strips the bos
  its template renders because its tokenizer adds one itself, which implies add_bos_token is
  true in the checkpoint's tokenizer_config.json (inferred).
Not confirmed (the Hub is unreachable): the 2B vocabulary's scores, and its ids for key, val,
choice and fim_* tokens.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from mlx_plamo3.chat_template import (
    FALLBACK_TEMPLATE,
    TEMPLATE_FILE,
    assistant_token_mask,
    chat_prompt_and_full_ids,
    default_chat_template,
    render_conversation,
    render_template,
)
from mlx_plamo3.errors import InputError, PlamoError
from mlx_plamo3.io import read_json

VOCAB_FILE = "tokenizer.jsonl"
CONFIG_FILE = "tokenizer_config.json"
GENERATION_CONFIG_FILE = "generation_config.json"

PIECE_KINDS = ("NORMAL", "UNKNOWN", "CONTROL", "USER_DEFINED", "UNUSED", "BYTE")
# PFN's defaults when tokenizer_config.json names no token.
DEFAULT_SPECIAL_TOKENS = {
    "unk_token": "<|plamo:unk|>",
    "bos_token": "<|plamo:bos|>",
    "eos_token": "<|plamo:eos|>",
    "pad_token": "<|plamo:pad|>",
}
# PFN keeps scores as integers of score * 1e4; a character no piece covers costs this much.
SCORE_SCALE = 1e4
UNKNOWN_SCORE = -10_000_000
CONTROL_PATTERN = r"<\|plamo:[^|\s]{0,64}\|>"
# The segment cache is keyed by text; chat data repeats system prompts and turn stretches.
SEGMENT_CACHE_SIZE = 1 << 16
_LEAF = ""  # trie key of a node's (token id, score); no text character is the empty string

# Keys of tokenizer_config.json we read; the second set is known and deliberately ignored.
_CONFIG_KEYS = {
    *DEFAULT_SPECIAL_TOKENS,
    "add_bos_token",
    "add_eos_token",
    "additional_special_tokens",
    "extra_special_tokens",
    "added_tokens_decoder",
    "chat_template",
    "break_around_consecutive_spaces_threshold",
    "break_around_repeated_chars_threshold",
}
_IGNORED_CONFIG_KEYS = {
    "auto_map",
    "tokenizer_class",
    "clean_up_tokenization_spaces",
    "model_max_length",
    "model_input_names",
    "padding_side",
    "truncation_side",
    "cls_token",
    "sep_token",
    "mask_token",
    "sp_model_kwargs",
    "spaces_between_special_tokens",
    "use_default_system_prompt",
    "legacy",
    "backend",
    "is_local",
    "vocab_file",
    "name_or_path",
    "processor_class",
    "split_special_tokens",
    "model_specific_special_tokens",
    "tokenizer_file",
}


class TokenizerFileError(PlamoError, ValueError):
    """A tokenizer file that cannot be used; the message names the file, line or key."""


def parse_vocab_line(line: str, path: Path, lineno: int) -> tuple[str, float, str]:
    """One `[piece, score, kind, ...]` row; `lineno` counts from 1 for the error message."""
    where = f"{path}:{lineno}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise TokenizerFileError(f"{where}: not valid JSON ({err.msg})") from None
    if not isinstance(row, list) or len(row) < 2:
        raise TokenizerFileError(f"{where}: expected a [piece, score, kind] array, got {line!r}")
    piece, score = row[0], row[1]
    kind = row[2] if len(row) > 2 else "NORMAL"
    if not isinstance(piece, str) or piece == "":
        raise TokenizerFileError(f"{where}: piece must be a non-empty string, got {piece!r}")
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        raise TokenizerFileError(f"{where}: score must be a number, got {score!r}")
    if kind not in PIECE_KINDS:
        raise TokenizerFileError(f"{where}: unknown kind {kind!r}; expected one of {PIECE_KINDS}")
    if kind == "BYTE" and not re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", piece):
        raise TokenizerFileError(f"{where}: BYTE piece must look like <0xHH>, got {piece!r}")
    return piece, float(score), kind


def read_vocab(path: str | Path) -> list[tuple[str, float, str]]:
    """All rows of a tokenizer.jsonl, checked; raises naming the file and line of a bad row."""
    path = Path(path)
    rows: list[tuple[str, float, str]] = []
    first_line: dict[str, int] = {}
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            piece, score, kind = parse_vocab_line(line, path, lineno)
            if piece in first_line:
                raise TokenizerFileError(
                    f"{path}:{lineno}: piece {piece!r} repeats line {first_line[piece]}"
                )
            first_line[piece] = lineno
            rows.append((piece, score, kind))
    if not rows:
        raise TokenizerFileError(f"{path}: empty vocabulary")
    return rows


def byte_piece_ids(rows: Sequence[tuple[str, float, str]], source: str) -> list[int]:
    """Token id of `<0xHH>` for every byte value; raises naming every missing byte."""
    ids = [-1] * 256
    for token_id, (piece, _, kind) in enumerate(rows):
        if kind == "BYTE":
            ids[int(piece[3:5], 16)] = token_id
    missing = [f"<0x{value:02X}>" for value, token_id in enumerate(ids) if token_id < 0]
    if missing:
        shown = ", ".join(missing[:8]) + (", ..." if len(missing) > 8 else "")
        raise TokenizerFileError(
            f"{source}: {len(missing)} byte pieces missing ({shown}); the byte fallback needs "
            "all 256 <0xHH> rows of kind BYTE"
        )
    return ids


def build_trie(rows: Sequence[tuple[str, float, str]]) -> dict[str, Any]:
    """Character trie of the pieces the DP may use: every non-BYTE row with a finite score."""
    root: dict[str, Any] = {}
    for token_id, (piece, score, kind) in enumerate(rows):
        if kind == "BYTE" or not math.isfinite(score):
            continue
        node = root
        for char in piece:
            node = node.setdefault(char, {})
        node[_LEAF] = (token_id, round(score * SCORE_SCALE))
    return root


def best_segmentation(text: str, trie: Mapping[str, Any]) -> list[tuple[int, int]]:
    """(length, token id) pieces of the highest-scoring split of `text`; id -1 for a character
    no piece covers. Among equal totals the longer piece at the earliest position wins."""
    n = len(text)
    best = [0] * (n + 1)
    step = [1] * (n + 1)
    token = [-1] * (n + 1)
    for i in range(n - 1, -1, -1):
        top, top_len, top_id = best[i + 1] + UNKNOWN_SCORE, 1, -1
        node = trie
        j = i
        while j < n:
            node = node.get(text[j])
            if node is None:
                break
            j += 1
            leaf = node.get(_LEAF)
            # `>=` with lengths ascending lets the longer piece win a tie, as PFN's table does.
            if leaf is not None and best[j] + leaf[1] >= top:
                top, top_len, top_id = best[j] + leaf[1], j - i, leaf[0]
        best[i], step[i], token[i] = top, top_len, top_id
    pieces = []
    i = 0
    while i < n:
        pieces.append((step[i], token[i]))
        i += step[i]
    return pieces


def repeat_break_pattern(
    repeated_chars: int | None, consecutive_spaces: int | None
) -> re.Pattern[str] | None:
    """PFN's `break_around_*` isolation: runs of one character (not newline) at least
    `repeated_chars` long, then runs of at least `consecutive_spaces` spaces."""
    parts = []
    if repeated_chars is not None:
        parts.append(rf"(.)\2{{{repeated_chars - 1},}}")
    if consecutive_spaces is not None:
        parts.append(rf" {{{consecutive_spaces},}}")
    return re.compile("(" + "|".join(parts) + ")") if parts else None


def split_on(pattern: re.Pattern[str] | None, text: str) -> list[str]:
    """`text` cut before and after every match of `pattern`, empty pieces dropped."""
    if pattern is None:
        return [text] if text else []
    out, last = [], 0
    for match in pattern.finditer(text):
        if match.start() > last:
            out.append(text[last : match.start()])
        if match.end() > match.start():
            out.append(match.group(0))
        last = match.end()
    if last < len(text):
        out.append(text[last:])
    return out


def _token_text(value: Any, key: str, source: str) -> str | None:
    """A special token from tokenizer_config.json: a string, null, or a serialized AddedToken."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    raise TokenizerFileError(f"{source}: key {key!r} must be a token string, got {value!r}")


def generation_eos_ids(path: Path) -> frozenset[int]:
    """The eos ids a checkpoint's generation_config.json names (an int or a list), if any."""
    if not path.is_file():
        return frozenset()
    document = read_json(path)
    if not isinstance(document, dict):
        raise TokenizerFileError(f"{path}: expected a JSON object")
    value = document.get("eos_token_id")
    if value is None:
        return frozenset()
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise TokenizerFileError(f"{path}: eos_token_id must be an integer or a list of them")
    return frozenset(values)


def _threshold(config: Mapping[str, Any], key: str, source: str) -> int | None:
    value = config.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TokenizerFileError(f"{source}: key {key!r} must be a positive integer or null")
    return value


def _template_from_config(config: Mapping[str, Any], source: str) -> str | None:
    """`chat_template` as a string, or the `default` entry of transformers' named-list form."""
    value = config.get("chat_template")
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        for entry in value:
            if isinstance(entry, Mapping) and entry.get("name") == "default":
                return str(entry["template"])
    raise TokenizerFileError(f"{source}: key 'chat_template' has no usable default template")


class Plamo3Tokenizer:
    """PLaMo 3 tokenizer: `tokenizer.jsonl` + `tokenizer_config.json` + chat template."""

    def __init__(
        self,
        rows: Sequence[tuple[str, float, str]],
        config: Mapping[str, Any] | None = None,
        chat_template: str | None = None,
        source: str = "<memory>",
    ) -> None:
        config = dict(config or {})
        config_source = f"{source}/{CONFIG_FILE}"
        for key in sorted(set(config) - _CONFIG_KEYS - _IGNORED_CONFIG_KEYS):
            warnings.warn(f"{config_source}: unknown key {key!r} ignored", stacklevel=2)
        self.source = source
        # Extra ids that end generation, from generation_config.json (set by from_pretrained).
        self.generation_eos_ids: frozenset[int] = frozenset()
        self._pieces = [piece for piece, _, _ in rows]
        self._kinds = [kind for _, _, kind in rows]
        self._scores = [score for _, score, _ in rows]
        self._piece_to_id = {piece: token_id for token_id, piece in enumerate(self._pieces)}
        self._byte_ids = byte_piece_ids(rows, f"{source}/{VOCAB_FILE}")
        self._byte_of_id = {token_id: value for value, token_id in enumerate(self._byte_ids)}
        self._trie = build_trie(rows)

        self._special: dict[str, str | None] = {}
        for key, default in DEFAULT_SPECIAL_TOKENS.items():
            text = _token_text(config.get(key, default), key, config_source)
            if text is not None and text not in self._piece_to_id:
                raise TokenizerFileError(
                    f"{config_source}: key {key!r} names {text!r}, which is not in the vocabulary"
                )
            self._special[key] = text
        extra: list[str] = []
        for key in ("additional_special_tokens", "extra_special_tokens"):
            values = config.get(key) or []
            values = list(values.values()) if isinstance(values, Mapping) else list(values)
            for value in values:
                text = _token_text(value, key, config_source)
                if text is None or text not in self._piece_to_id:
                    raise TokenizerFileError(
                        f"{config_source}: key {key!r} lists {value!r}, not in the vocabulary"
                    )
                extra.append(text)
        added = config.get("added_tokens_decoder") or {}
        self._check_added_tokens(added, config_source)

        self.add_bos_token = bool(config.get("add_bos_token", False))
        self.add_eos_token = bool(config.get("add_eos_token", False))
        specials = [text for text in self._special.values() if text is not None] + extra
        self._special_texts = frozenset(specials)
        self._all_special_ids = sorted({self._piece_to_id[text] for text in specials})
        # Cut out whole, as transformers does: the specials and every added token.
        where = "added_tokens_decoder"
        added_texts = {_token_text(v, where, config_source) for v in added.values()}
        self._whole_texts = self._special_texts | (added_texts - {None})
        # Those first (longest first, as a trie would), then the generic control pattern.
        alternatives = [re.escape(text) for text in sorted(self._whole_texts, key=len)[::-1]]
        self._atom_pattern = re.compile("|".join([*alternatives, CONTROL_PATTERN]))
        self._break_pattern = repeat_break_pattern(
            _threshold(config, "break_around_repeated_chars_threshold", config_source),
            _threshold(config, "break_around_consecutive_spaces_threshold", config_source),
        )
        self._segment_ids = lru_cache(maxsize=SEGMENT_CACHE_SIZE)(self._segment_ids_uncached)

        template = chat_template
        self.chat_template_source = source
        if template is None:
            template = _template_from_config(config, config_source)
            self.chat_template_source = config_source
        if template is None:
            template = default_chat_template()
            self.chat_template_source = str(FALLBACK_TEMPLATE)
        self.chat_template = template

    # ---- loading -------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | Path) -> Plamo3Tokenizer:
        """Load a checkpoint directory: tokenizer.jsonl, tokenizer_config.json, and the chat
        template from chat_template.jinja, else tokenizer_config's chat_template, else ours."""
        path = Path(path)
        vocab_path = path / VOCAB_FILE
        if not vocab_path.is_file():
            raise FileNotFoundError(f"{vocab_path}: no PLaMo vocabulary (tokenizer.jsonl) here")
        rows = read_vocab(vocab_path)
        config: dict[str, Any] = {}
        config_path = path / CONFIG_FILE
        if config_path.is_file():
            try:
                config = json.loads(config_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                raise TokenizerFileError(
                    f"{config_path}:{err.lineno}: not valid JSON ({err.msg})"
                ) from None
            if not isinstance(config, dict):
                raise TokenizerFileError(f"{config_path}: expected a JSON object")
        template_path = path / TEMPLATE_FILE
        template = template_path.read_text(encoding="utf-8") if template_path.is_file() else None
        tokenizer = cls(rows, config, chat_template=template, source=str(path))
        if template is not None:
            tokenizer.chat_template_source = str(template_path)
        tokenizer.generation_eos_ids = generation_eos_ids(path / GENERATION_CONFIG_FILE)
        return tokenizer

    def _check_added_tokens(self, added: Mapping[str, Any], source: str) -> None:
        """transformers' `added_tokens_decoder` must agree with the vocabulary it annotates."""
        for key, entry in added.items():
            text = _token_text(entry, f"added_tokens_decoder.{key}", source)
            token_id = int(key)
            if not 0 <= token_id < len(self._pieces) or self._pieces[token_id] != text:
                raise TokenizerFileError(
                    f"{source}: key 'added_tokens_decoder.{key}' says {text!r}, but "
                    f"{VOCAB_FILE} has {self._piece_or_none(token_id)!r} at id {token_id}"
                )

    def _piece_or_none(self, token_id: int) -> str | None:
        return self._pieces[token_id] if 0 <= token_id < len(self._pieces) else None

    # ---- vocabulary ----------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self._pieces)

    def __len__(self) -> int:
        return len(self._pieces)

    def get_vocab(self) -> dict[str, int]:
        return dict(self._piece_to_id)

    def kind(self, token_id: int) -> str:
        return self._kinds[token_id]

    def score(self, token_id: int) -> float:
        return self._scores[token_id]

    def _special_id(self, key: str) -> int | None:
        text = self._special[key]
        return None if text is None else self._piece_to_id[text]

    @property
    def bos_token(self) -> str | None:
        return self._special["bos_token"]

    @property
    def eos_token(self) -> str | None:
        return self._special["eos_token"]

    @property
    def bos_token_id(self) -> int | None:
        return self._special_id("bos_token")

    @property
    def eos_token_id(self) -> int | None:
        return self._special_id("eos_token")

    @property
    def pad_token_id(self) -> int | None:
        return self._special_id("pad_token")

    @property
    def unk_token_id(self) -> int | None:
        return self._special_id("unk_token")

    @property
    def all_special_ids(self) -> list[int]:
        return list(self._all_special_ids)

    @property
    def special_tokens_map(self) -> dict[str, str]:
        return {key: text for key, text in self._special.items() if text is not None}

    def convert_tokens_to_ids(self, tokens: str | Iterable[str]) -> int | list[int]:
        """Ids of pieces; unlike transformers an unknown piece raises instead of mapping to unk."""
        if isinstance(tokens, str):
            return self._id_of(tokens)
        return [self._id_of(token) for token in tokens]

    def _id_of(self, token: str) -> int:
        try:
            return self._piece_to_id[token]
        except KeyError:
            raise KeyError(f"{token!r} is not a piece of {self.source}/{VOCAB_FILE}") from None

    def convert_ids_to_tokens(
        self, ids: int | Iterable[int], skip_special_tokens: bool = False
    ) -> str | list[str]:
        if not isinstance(ids, Iterable):
            return self._pieces[self._checked_id(ids)]
        skip = set(self._all_special_ids) if skip_special_tokens else set()
        return [self._pieces[self._checked_id(i)] for i in ids if int(i) not in skip]

    def _checked_id(self, token_id: Any) -> int:
        token_id = int(token_id)
        if not 0 <= token_id < len(self._pieces):
            raise IndexError(f"token id {token_id} is outside the vocabulary [0, {len(self)})")
        return token_id

    # ---- encoding ------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; with `add_special_tokens`, bos/eos as tokenizer_config asks
        (transformers' default; a chat render is encoded without them)."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        ids: list[int] = []
        if add_special_tokens and self.add_bos_token and self.bos_token_id is not None:
            ids.append(self.bos_token_id)
        last = 0
        for match in self._atom_pattern.finditer(text):
            if match.start() > last:
                ids.extend(self._stretch_ids(text[last : match.start()]))
            atom = match.group(0)
            if atom in self._whole_texts:
                ids.append(self._piece_to_id[atom])
            else:  # PFN's break runs cut inside such a control too
                ids.extend(self._stretch_ids(atom))
            last = match.end()
        if last < len(text):
            ids.extend(self._stretch_ids(text[last:]))
        if add_special_tokens and self.add_eos_token and self.eos_token_id is not None:
            ids.append(self.eos_token_id)
        return ids

    def _stretch_ids(self, text: str) -> list[int]:
        if self._break_pattern is None:
            return list(self._segment_ids(text))
        out: list[int] = []
        for part in split_on(self._break_pattern, text):
            out.extend(self._segment_ids(part))
        return out

    def _segment_ids_uncached(self, text: str) -> tuple[int, ...]:
        ids: list[int] = []
        pos = 0
        for length, token_id in best_segmentation(text, self._trie):
            if token_id >= 0:
                ids.append(token_id)
            else:
                char = text[pos]
                try:
                    encoded = char.encode("utf-8")
                except UnicodeEncodeError:
                    raise InputError(
                        f"text contains a lone surrogate {char!r}, which has no UTF-8 bytes"
                    ) from None
                ids.extend(self._byte_ids[b] for b in encoded)
            pos += length
        return tuple(ids)

    def tokenize(self, text: str) -> list[str]:
        """The pieces of `text` (no bos/eos added)."""
        return [self._pieces[i] for i in self.encode(text, add_special_tokens=False)]

    def cache_clear(self) -> None:
        """Forget cached segment encodings (benchmarks measure cold encodes with this)."""
        self._segment_ids.cache_clear()

    # ---- decoding ------------------------------------------------------------------------

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`: pieces' UTF-8 bytes joined (a BYTE piece is its byte), decoded with
        U+FFFD for invalid sequences."""
        if not isinstance(ids, Iterable):
            ids = [ids]
        skip = set(self._all_special_ids) if skip_special_tokens else ()
        data = bytearray()
        for raw in ids:
            token_id = self._checked_id(raw)
            if token_id in skip:
                continue
            byte = self._byte_of_id.get(token_id)
            if byte is not None:
                data.append(byte)
            else:
                data += self._pieces[token_id].encode("utf-8")
        return data.decode("utf-8", errors="replace")

    # ---- chat template (rendering and the mask live in mlx_plamo3.chat_template) ---------

    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = False,
        tools: list[Any] | None = None,
        documents: list[Any] | None = None,
        **kwargs: Any,
    ) -> str:
        """The template's text for `messages` (may be empty, unlike apply_chat_template)."""
        return render_template(
            self.chat_template,
            self.chat_template_source,
            messages,
            add_generation_prompt,
            tools,
            documents,
            {**self.special_tokens_map, **kwargs},
        )

    def apply_chat_template(
        self,
        conversation: Sequence[Mapping[str, Any]],
        tools: list[Any] | None = None,
        documents: list[Any] | None = None,
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
        tokenize: bool = True,
        **kwargs: Any,
    ) -> str | list[int]:
        """transformers' apply_chat_template for one conversation: the rendered text when
        `tokenize` is false, else its ids encoded without adding bos/eos (the template has them).
        Extra keyword arguments become template variables, as in transformers."""
        if chat_template is None or chat_template == self.chat_template:
            chat_template, source = self.chat_template, self.chat_template_source
        else:
            source = "<chat_template argument>"
        text = render_conversation(
            chat_template,
            source,
            conversation,
            add_generation_prompt,
            tools,
            documents,
            {**self.special_tokens_map, **kwargs},
        )
        return self.encode(text, add_special_tokens=False) if tokenize else text

    def _chat_ids(self, messages: Sequence[Mapping[str, Any]], generation: bool) -> list[int]:
        return self.encode(self.render_chat(messages, generation), add_special_tokens=False)

    def chat_prompt_and_full_ids(
        self, messages: Sequence[Mapping[str, Any]]
    ) -> tuple[list[int], list[int]]:
        """(ids of the conversation before its last assistant turn, with the generation prompt;
        ids of the whole conversation); see `mlx_plamo3.chat_template.chat_prompt_and_full_ids`."""
        return chat_prompt_and_full_ids(messages, self._chat_ids)

    def assistant_token_mask(
        self, messages: Sequence[Mapping[str, Any]]
    ) -> tuple[list[int], list[bool]]:
        """(ids of the whole conversation, True exactly on each assistant turn's own tokens);
        derived from prefix renders as `mlx_plamo3.chat_template` states."""
        return assistant_token_mask(messages, self._chat_ids)
