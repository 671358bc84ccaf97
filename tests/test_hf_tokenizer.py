"""The fast tokenizer.json written into converted dirs, against PLaMo's segmentation.

An independent reference (below) segments text the way PFN specifies it: `<|plamo:...|>`
atoms cut out (specials as single ids), optional `break_around_*` runs cut out, then the
highest total of integer scores round(score * 1e4), an uncovered character costing -1e7 and
spelled as its UTF-8 byte pieces. It can resolve ties either way:
- "first": the longest piece at the earliest position (PFN, and the native tokenizer);
- "last": the longest piece at the latest position (tokenizers' Unigram).
The tests pin the characterisation: native == reference("first"), HF == reference("last"),
and so HF == native exactly wherever the best segmentation of every stretch is unique.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx_lm
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from convert.convert import convert_checkpoint
from convert.hf_tokenizer import write_hf_tokenizer
from convert.tiny import write_tiny_checkpoint
from convert.tiny_vocab import tiny_tokenizer_config, tiny_vocab_rows
from mlx_plamo3.tokenizer import Plamo3Tokenizer

CONTROL = re.compile(r"<\|plamo:[^|\s]{0,64}\|>")
UNKNOWN = -10_000_000
SPECIAL_KEYS = ("unk_token", "bos_token", "eos_token", "pad_token")
BOS, TAG, MSG = "<|plamo:bos|>", "<|plamo:tag|>", "<|plamo:msg|>"


# ---- the independent reference ------------------------------------------------------------


@dataclass(frozen=True)
class Edge:
    start: int
    end: int
    token_id: int | None  # None: an uncovered character, spelled as bytes
    score: int


@dataclass(frozen=True)
class Reference:
    pieces: dict[str, tuple[int, int]]  # piece -> (id, integer score); BYTE rows excluded
    byte_ids: dict[int, int]
    specials: frozenset[str]
    breaks: re.Pattern[str] | None
    longest: int

    @classmethod
    def load(cls, directory: Path, breaks: str | None = None) -> Reference:
        lines = (directory / "tokenizer.jsonl").read_text(encoding="utf-8").splitlines()
        rows = [json.loads(line) for line in lines]
        config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
        pieces = {r[0]: (i, round(r[1] * 1e4)) for i, r in enumerate(rows) if r[2] != "BYTE"}
        return cls(
            pieces=pieces,
            byte_ids={int(r[0][3:5], 16): i for i, r in enumerate(rows) if r[2] == "BYTE"},
            specials=frozenset(config[k] for k in SPECIAL_KEYS if config.get(k)),
            breaks=re.compile(breaks) if breaks else None,
            longest=max(map(len, pieces)),
        )

    def stretches(self, text: str) -> list[str]:
        """The stretches segmented apart, in order, found as PFN finds them: specials cut out
        whole first (transformers), then in each remaining part a mark put around every
        `<|plamo:...|>` match, then around every break run found in the marked text (so also
        inside a control that is not cut out whole); the stretches lie between marks."""
        out: list[str] = []
        last = 0
        for match in self._special_pattern().finditer(text):
            out += self._marked(text[last : match.start()])
            out.append(match.group())
            last = match.end()
        return out + self._marked(text[last:])

    def _special_pattern(self) -> re.Pattern[str]:
        longest_first = sorted(self.specials, key=len, reverse=True)
        return re.compile("|".join(map(re.escape, longest_first)) or "(?!)")

    def _marked(self, text: str) -> list[str]:
        # PFN marks with U+EE00 and drops that character from the input; a character the text
        # does not hold keeps the input whole.
        mark = next(chr(c) for c in range(0xEE00, 0xF900) if chr(c) not in text)
        text = CONTROL.sub(lambda m: mark + m.group() + mark, text)
        if self.breaks is not None:
            text = self.breaks.sub(lambda m: mark + m.group() + mark, text)
        return [part for part in text.split(mark) if part]

    def edges(self, text: str) -> list[Edge]:
        out = []
        for i in range(len(text)):
            out.append(Edge(i, i + 1, None, UNKNOWN))
            for j in range(i + 1, min(len(text), i + self.longest) + 1):
                hit = self.pieces.get(text[i:j])
                if hit is not None:
                    out.append(Edge(i, j, *hit))
        return out

    def segment(self, text: str, rule: str) -> tuple[list[Edge], int]:
        """(an optimal segmentation under the tie rule, how many optimal ones exist)."""
        n, edges = len(text), self.edges(text)
        suffix = [-(10**18)] * n + [0]
        count = [0] * n + [1]
        for i in range(n - 1, -1, -1):
            for e in (e for e in edges if e.start == i):
                value = e.score + suffix[e.end]
                if value > suffix[i]:
                    suffix[i], count[i] = value, count[e.end]
                elif value == suffix[i]:
                    count[i] += count[e.end]
        prefix = [0] + [-(10**18)] * n
        for e in sorted(edges, key=lambda e: e.start):
            prefix[e.end] = max(prefix[e.end], prefix[e.start] + e.score)
        # A piece beats an uncovered-character edge of the same span (it never ties here).
        key = lambda e: (e.end - e.start, e.token_id is not None)  # noqa: E731
        path: list[Edge] = []
        if rule == "first":
            i = 0
            while i < n:
                best = [e for e in edges if e.start == i and e.score + suffix[e.end] == suffix[i]]
                path.append(max(best, key=key))
                i = path[-1].end
        else:
            j = n
            while j > 0:
                best = [e for e in edges if e.end == j and prefix[e.start] + e.score == prefix[j]]
                path.insert(0, max(best, key=key))
                j = path[0].start
        return path, count[0]

    def encode(self, text: str, rule: str) -> list[int]:
        ids: list[int] = []
        for stretch in self.stretches(text):
            if stretch in self.specials:
                ids.append(self.pieces[stretch][0])
                continue
            for e in self.segment(stretch, rule)[0]:
                if e.token_id is not None:
                    ids.append(e.token_id)
                else:
                    ids += [self.byte_ids[b] for b in stretch[e.start].encode("utf-8")]
        return ids

    def unique(self, text: str) -> bool:
        """Whether every stretch has exactly one best segmentation."""
        return all(
            s in self.specials or self.segment(s, "first")[1] == 1 for s in self.stretches(text)
        )


# ---- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf(tiny_mlx_dir: Path) -> PreTrainedTokenizerFast:
    return AutoTokenizer.from_pretrained(tiny_mlx_dir)


@pytest.fixture(scope="module")
def native(tiny_mlx_dir: Path) -> Plamo3Tokenizer:
    return Plamo3Tokenizer.from_pretrained(tiny_mlx_dir)


@pytest.fixture(scope="module")
def ref(tiny_hf_dir: Path) -> Reference:
    return Reference.load(tiny_hf_dir)


def ids_of(tokenizer: PreTrainedTokenizerFast, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def check_against_reference(
    text: str, hf: PreTrainedTokenizerFast, native: Plamo3Tokenizer, ref: Reference
) -> None:
    fast, slow = ids_of(hf, text), native.encode(text, add_special_tokens=False)
    assert slow == ref.encode(text, "first")
    assert fast == ref.encode(text, "last")
    if ref.unique(text):
        assert fast == slow
    assert hf.decode(fast) == text
    assert native.decode(fast) == text


# ---- realistic text -----------------------------------------------------------------------

TOOL = {
    "name": "calculate_loan_payment",
    "description": "Calculate the monthly payment of a loan",
    "parameters": {
        "type": "object",
        "properties": {
            "amount": {"type": "number", "description": "The loan amount"},
            "rate": {"type": "number", "description": "The interest rate"},
            "currency": {"type": "string", "enum": ["USD", "EUR", "JPY"]},
        },
        "required": ["amount", "rate"],
    },
}
SYSTEM = (
    "You are a helpful assistant with access to the following tools. When the user's request "
    'requires a tool, respond with ONLY a JSON object {"name": <function-name>, "arguments": '
    "<args-object>}. If no tool is needed, answer normally.\nTools:\n"
)
CALL = {"name": "calculate_loan_payment", "arguments": {"amount": 50000, "rate": 4.5}}
TURNS = [
    {"role": "user", "content": "Can you calculate my monthly payment? 月々の支払いは? 💸"},
    {"role": "assistant", "content": json.dumps(CALL)},
    {"role": "tool", "content": json.dumps({"payment": 932.15, "currency": "USD"})},
    {"role": "assistant", "content": "Your monthly payment is $932.15 — ¡listo! 🎉"},
]


def chat(native: Plamo3Tokenizer, tools_json: str) -> str:
    messages = [{"role": "system", "content": SYSTEM + tools_json}, *TURNS]
    return native.render_chat(messages, add_generation_prompt=False)


def test_compact_tool_prompt_encodes_identically(hf, native, ref):
    # json.dumps without indent (the seed recipe's schema, the template's tojson) has no
    # whitespace runs, so every stretch has one best split and the ids are equal.
    text = chat(native, json.dumps([TOOL]))
    assert ref.unique(text)
    assert ids_of(hf, text) == native.encode(text, add_special_tokens=False)
    assert hf.decode(ids_of(hf, text)) == text
    check_against_reference(text, hf, native, ref)


def test_indented_tool_prompt_differs_only_in_tie_order(hf, native, ref):
    # glaive's schemas are indented: 12 spaces = 8 + 4 (PFN) or 4 + 8 (tokenizers).
    text = chat(native, json.dumps(TOOL, indent=4))
    assert not ref.unique(text)
    check_against_reference(text, hf, native, ref)
    fast, slow = ids_of(hf, text), native.encode(text, add_special_tokens=False)
    assert sorted(fast) == sorted(slow)  # here the same pieces, reordered within space runs


@pytest.mark.parametrize(
    "text",
    [
        f"Hello {TAG} world{MSG}the end",  # control tokens mid-text
        f"{BOS}{TAG}user{MSG}hi<|plamo:begin_think:plamo|>plan{TAG}",  # one not in the vocab
        "<|plamo:tag|><|plamo:<|plamo:msg|>|plamo:|>",  # a broken atom next to real ones
        "日本語のテキスト 😀 👩‍💻 é ñ ß Ω ∑ \u3000 \x1c",  # byte fallback
        "<|plamo:a\x1cb|> <|plamo:a\u3000b|>",  # Python's \s (not Oniguruma's) ends an atom
        "literal <0x41> and <0xZZ>",  # a BYTE piece's text is spelled by characters
        "a\r\nb\tc\x00d\ufeff\U0010ffff",
        "",
    ],
)
def test_special_text_matches(text, hf, native, ref):
    check_against_reference(text, hf, native, ref)
    assert ids_of(hf, text) == native.encode(text, add_special_tokens=False)


def test_tie_order_is_mirrored(hf, native):
    """The one systematic difference: three spaces are [two, one] in PFN's order and
    [one, two] in tokenizers' (same pieces, same total)."""
    assert native.tokenize("   ") == ["  ", " "]
    assert hf.tokenize("   ") == [" ", "  "]


# ---- arbitrary text -----------------------------------------------------------------------

FRAGMENTS = [
    " the", "the", " ", "  ", "   ", "\n", "\n\n", '{"', '": "', TAG, MSG, BOS, "<|plamo:",
    "|>", "<|plamo:begin_think:plamo|>", "<|plamo:x\x1cy|>", "<0x41>", "é", "日本", "😀",
    "calculate_", "_id", "x", "a",
]  # fmt: skip
characters = st.characters(exclude_categories=("Cs",))  # lone surrogates have no UTF-8
texts = st.one_of(
    st.text(characters, max_size=30),
    st.lists(st.sampled_from(FRAGMENTS) | st.text(characters, max_size=2), max_size=10).map(
        "".join
    ),
)


@settings(max_examples=200, deadline=None)
@given(text=texts)
def test_arbitrary_text_matches_the_characterisation(text, hf, native, ref):
    check_against_reference(text, hf, native, ref)


# ---- specials, bos/eos, decoding ----------------------------------------------------------


def test_bos_added_as_the_config_asks(hf, native):
    text = "What's the weather in Tokyo?"
    assert native.add_bos_token
    assert hf(text).input_ids == native.encode(text) == [native.bos_token_id, *ids_of(hf, text)]
    assert hf.bos_token_id == native.bos_token_id
    assert hf.eos_token_id == native.eos_token_id
    assert hf.pad_token_id == native.pad_token_id
    assert hf.unk_token_id == native.unk_token_id


def test_skip_special_tokens(hf, native):
    ids = [*native.encode(f"hi{TAG}there"), native.eos_token_id, native.pad_token_id]
    assert hf.decode(ids, skip_special_tokens=True) == native.decode(ids, True) == f"hi{TAG}there"
    assert hf.decode(ids) == native.decode(ids)


def test_decode_invalid_bytes_differs_only_in_replacement_count(hf, native):
    """PFN decodes with errors='replace' (one U+FFFD per maximal invalid subsequence);
    ByteFallback turns every byte of an invalid byte run into a U+FFFD."""
    byte = native.convert_tokens_to_ids
    ids = [byte("<0xE3>"), byte("<0x81>"), *native.encode("a", add_special_tokens=False)]
    assert native.decode(ids) == "\ufffda"
    assert hf.decode(ids) == "\ufffd\ufffda"


def test_vocabularies_agree(hf, native):
    assert hf.get_vocab() == native.get_vocab()
    assert len(hf) == len(native)


# ---- loading the converted dir ------------------------------------------------------------


def test_mlx_lm_load_runs_model_and_tokenizer(tiny_mlx_dir, native):
    model, tokenizer = mlx_lm.load(str(tiny_mlx_dir))
    text = f"{TAG}user{MSG}Hello there, what is the time?{TAG}assistant{MSG}"
    ids = tokenizer.encode(text)
    assert ids == native.encode(text)
    logits = model(mx.array([ids]))
    assert logits.shape == (1, len(ids), len(native))
    assert tokenizer.decode(ids[1:]) == text


def test_converted_config_only_renames_the_class(tiny_hf_dir, tiny_mlx_dir):
    source = json.loads((tiny_hf_dir / "tokenizer_config.json").read_text())
    out = json.loads((tiny_mlx_dir / "tokenizer_config.json").read_text())
    assert source["tokenizer_class"] == "Plamo3Tokenizer"
    assert out["tokenizer_class"] == "PreTrainedTokenizerFast"
    changed = {k for k in source if source[k] != out.get(k)}
    assert changed == {"tokenizer_class"}
    assert (tiny_mlx_dir / "tokenizer.json").is_file()


def test_native_loads_converted_dir_identically(tiny_hf_dir, tiny_mlx_dir):
    before = Plamo3Tokenizer.from_pretrained(tiny_hf_dir)
    after = Plamo3Tokenizer.from_pretrained(tiny_mlx_dir)
    assert after.get_vocab() == before.get_vocab()
    assert after.special_tokens_map == before.special_tokens_map
    assert after.all_special_ids == before.all_special_ids
    assert (after.add_bos_token, after.add_eos_token) == (before.add_bos_token, False)
    assert after.chat_template == before.chat_template
    for text in ["   x  y", f"a{TAG}b 😀", json.dumps(TOOL, indent=2)]:
        assert after.encode(text) == before.encode(text)


def test_real_checkpoint_config_loses_its_remote_code_pointer(tmp_path):
    """The real checkpoint's config has an auto_map to PFN's tokenization_plamo.py and names
    Plamo3Tokenizer. The converted config names PreTrainedTokenizerFast and has no auto_map,
    so AutoTokenizer and mlx_lm.load take the fast tokenizer and never import that file
    (still copied alongside); a module that raises on import proves it."""
    src = write_tiny_checkpoint(tmp_path / "hf", seed=0)
    config = json.loads((src / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["tokenization_plamo.Plamo3Tokenizer", None]}
    (src / "tokenizer_config.json").write_text(json.dumps(config))
    (src / "tokenization_plamo.py").write_text("raise RuntimeError('remote code ran')\n")
    out = convert_checkpoint(src, tmp_path / "mlx", dtype="float32", progress=lambda x, **_: x)
    written = json.loads((out / "tokenizer_config.json").read_text())
    assert "auto_map" not in written
    assert written["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (out / "tokenization_plamo.py").is_file()
    text = "the end"
    native = Plamo3Tokenizer.from_pretrained(out)
    assert AutoTokenizer.from_pretrained(out).encode(text) == native.encode(text)
    _, wrapped = mlx_lm.load(str(out))
    assert wrapped.encode(text) == native.encode(text)


# ---- other vocabularies and configs -------------------------------------------------------


def write_source(directory: Path, rows: list[list], config: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    (directory / "tokenizer.jsonl").write_text(lines, encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


def convert_tokenizer(tmp_path: Path, rows: list[list], config: dict | None = None) -> Path:
    src = write_source(tmp_path / "src", rows, config or tiny_tokenizer_config())
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(src / "tokenizer.jsonl", out / "tokenizer.jsonl")
    assert write_hf_tokenizer(src, out) == out / "tokenizer.json"
    return out


# Characters that spell "<0xHH>": without them a BYTE piece's text is cheaper as that piece.
BYTE_TEXT_CHARS = {c: -1.0 for c in "<>x0123456789ABCDEF"}


def small_rows(pieces: dict[str, float], base: dict[str, float] = BYTE_TEXT_CHARS) -> list[list]:
    specials = [["<|plamo:unk|>", 0.0, "UNKNOWN"]]
    specials += [[t, 0.0, "CONTROL"] for t in (BOS, "<|plamo:eos|>", "<|plamo:pad|>")]
    byte_rows = [[f"<0x{b:02X}>", 0.0, "BYTE"] for b in range(256)]
    return specials + byte_rows + [[p, s, "NORMAL"] for p, s in (base | pieces).items()]


@pytest.mark.parametrize(("xy", "expected"), [(-99.9999, "bytes+xy"), (-100.0001, "éx+y")])
def test_uncovered_character_costs_exactly_minus_1e7(tmp_path, xy, expected):
    # "éxy": [éx, y] totals -1100; [<é bytes>, xy] totals -1000 + xy. Only an unknown cost of
    # exactly -1000 (PFN's -1e7 integer units) puts the switch between these two scores.
    out = convert_tokenizer(tmp_path, small_rows({"éx": -700.0, "y": -400.0, "xy": xy}))
    hf, native = AutoTokenizer.from_pretrained(out), Plamo3Tokenizer.from_pretrained(out)
    pieces = ["<0xC3>", "<0xA9>", "xy"] if expected == "bytes+xy" else ["éx", "y"]
    assert hf.tokenize("éxy") == native.tokenize("éxy") == pieces


def test_score_below_the_floor_warns_and_shifts_the_unknown_cost(tmp_path):
    """The documented limit: a piece scoring below -999.999 lowers Unigram's unknown cost."""
    rows = small_rows({"x": 0.0, "xé": -1000.0001})
    with pytest.warns(UserWarning, match="below"):
        out = convert_tokenizer(tmp_path, rows)
    hf, native = AutoTokenizer.from_pretrained(out), Plamo3Tokenizer.from_pretrained(out)
    assert native.tokenize("xé") == ["x", "<0xC3>", "<0xA9>"]
    assert hf.tokenize("xé") == ["xé"]


def test_byte_piece_text_the_vocabulary_cannot_spell_warns(tmp_path):
    """The other documented limit: where "<0x41>" is not spelled by its characters, Unigram
    takes the BYTE piece (at the floor) while PFN spells six uncovered characters."""
    with pytest.warns(UserWarning, match="BYTE piece"):
        out = convert_tokenizer(tmp_path, small_rows({"a": -1.0}, base={}))
    hf, native = AutoTokenizer.from_pretrained(out), Plamo3Tokenizer.from_pretrained(out)
    assert hf.tokenize("<0x41>") == ["<0x41>"]
    assert native.tokenize("<0x41>") == [f"<0x{b:02X}>" for b in b"<0x41>"]


def test_realistic_vocabulary_writes_without_warnings(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convert_tokenizer(tmp_path, [list(r) for r in tiny_vocab_rows()])


# Pieces that cross where atoms and break runs cut: with them, a boundary in the wrong place (or
# a missing one) changes the ids, which the tiny vocabulary alone would not show.
CROSSING = {"e<": -1.0, ">t": -1.0, "> ": -1.0, "><": -1.0, "|a": -1.0, "hee": -1.0, "a\x1c": -1.0}
CROSSING_TEXTS = [
    "e<|plamo:a\x1cb|>t e<|plamo:a\u3000b|>t e<|plamo:ab|>t",
    "<|plamo:theee|> <|plamo:haaa|> theee",
    "<<<|plamo:x|> <|plamo:aaaa|> <|plamo:    |>",
    f"x{TAG}{TAG}yyy{TAG}   z",
    "aaaa bbb cc    d   e  f \n\n\n\n====---- 😀😀😀😀 日日日",
    "<|plamo:::x|>e<|plamo:aaaaaaaa|>t<|plamo:x>>>|>",  # runs inside controls (PFN breaks them)
]
BREAKS = {
    "break_around_repeated_chars_threshold": 3,
    "break_around_consecutive_spaces_threshold": 2,
}


@pytest.fixture(scope="module", params=["atoms", "atoms+breaks"])
def crossing(request, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """(fast, native, reference) on the tiny vocabulary plus CROSSING pieces, with and
    without the break_around_* thresholds."""
    breaks = request.param == "atoms+breaks"
    config = {**tiny_tokenizer_config(), **(BREAKS if breaks else {})}
    rows = [list(r) for r in tiny_vocab_rows()] + [[p, v, "NORMAL"] for p, v in CROSSING.items()]
    tmp = tmp_path_factory.mktemp(request.param)
    out = convert_tokenizer(tmp, rows, config)
    ref = Reference.load(tmp / "src", breaks=r"(.)\1{2,}| {2,}" if breaks else None)
    return AutoTokenizer.from_pretrained(out), Plamo3Tokenizer.from_pretrained(out), ref


@pytest.mark.parametrize("text", CROSSING_TEXTS)
def test_boundaries_fall_where_pfn_puts_them(text, crossing):
    check_against_reference(text, *crossing)


@settings(max_examples=100, deadline=None)
@given(text=st.lists(st.sampled_from([*FRAGMENTS, *CROSSING, "e", "t", ">"]), max_size=12))
def test_boundaries_on_arbitrary_text(text, crossing):
    check_against_reference("".join(text), *crossing)


def test_no_vocabulary_writes_nothing(tmp_path):
    (tmp_path / "out").mkdir()
    assert write_hf_tokenizer(tmp_path, tmp_path / "out") is None
    assert not any((tmp_path / "out").iterdir())


def test_writer_is_fast_for_a_100k_vocabulary(tmp_path):
    rows = [list(r) for r in tiny_vocab_rows()]
    seen = {r[0] for r in rows}
    letters = "abcdefghijklmnopqrstuvwxyz 日本語のテキスト"
    k = 0
    while len(rows) < 100_000:
        k += 1
        piece = "".join(letters[(k * 7 + i * k) % len(letters)] for i in range(2 + k % 9))
        piece += str(k)
        if piece not in seen:
            seen.add(piece)
            rows.append([piece, -5.0 - (k % 1000) / 100, "NORMAL"])
    src = write_source(tmp_path / "src", rows, tiny_tokenizer_config())
    (tmp_path / "out").mkdir()
    start = time.perf_counter()
    write_hf_tokenizer(src, tmp_path / "out")
    assert time.perf_counter() - start < 15
    hf = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert len(hf) == 100_000
