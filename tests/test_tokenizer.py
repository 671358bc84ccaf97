"""The native PLaMo 3 tokenizer: vocabulary loading and its errors, segmentation against an
independent brute-force search, control tokens, byte fallback and exact round trips."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convert.tiny_vocab import tiny_vocab_rows, write_tiny_tokenizer
from mlx_plamo3.tokenizer import (
    Plamo3Tokenizer,
    TokenizerFileError,
    best_segmentation,
)

SPECIALS = [
    ["<|plamo:unk|>", 0.0, "UNKNOWN"],
    ["<|plamo:bos|>", 0.0, "CONTROL"],
    ["<|plamo:eos|>", 0.0, "CONTROL"],
    ["<|plamo:pad|>", 0.0, "CONTROL"],
]
BYTES = [[f"<0x{value:02X}>", 0.0, "BYTE"] for value in range(256)]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny_tokenizer")
    write_tiny_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def tok(tiny_dir: Path) -> Plamo3Tokenizer:
    return Plamo3Tokenizer.from_pretrained(tiny_dir)


def make_tokenizer(pieces: dict[str, float], config: dict | None = None) -> Plamo3Tokenizer:
    """Specials at 0-3, bytes at 4-259, then `pieces` as NORMAL rows."""
    rows = [tuple(row) for row in SPECIALS + BYTES]
    rows += [(piece, score, "NORMAL") for piece, score in pieces.items()]
    return Plamo3Tokenizer(rows, config or {})


def write_jsonl(path: Path, rows: list) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    lines = [row if isinstance(row, str) else json.dumps(row, ensure_ascii=False) for row in rows]
    (path / "tokenizer.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---- the tiny vocabulary ------------------------------------------------------------------


def test_tiny_vocabulary_pins_the_known_ids_and_is_deterministic(tmp_path: Path) -> None:
    size = write_tiny_tokenizer(tmp_path / "a")
    write_tiny_tokenizer(tmp_path / "b")
    for name in ("tokenizer.jsonl", "tokenizer_config.json", "chat_template.jinja"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    lines = (tmp_path / "a" / "tokenizer.jsonl").read_text(encoding="utf-8").splitlines()
    assert size == len(lines) == len(tiny_vocab_rows()) < 2000
    tok = Plamo3Tokenizer.from_pretrained(tmp_path / "a")
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 3)
    expected = {"<|plamo:tag|>": 16, "<|plamo:msg|>": 19, "<|plamo:constrain|>": 31}
    assert {piece: tok.convert_tokens_to_ids(piece) for piece in expected} == expected
    for name in ("key", "val", "choice", "fim_prefix", "fim_suffix", "fim_middle"):
        assert tok.kind(tok.convert_tokens_to_ids(f"<|plamo:{name}|>")) == "CONTROL"
    assert all(tok.kind(tok.convert_tokens_to_ids(f"<0x{b:02X}>")) == "BYTE" for b in range(256))
    assert tok.add_bos_token and not tok.add_eos_token
    assert tok.all_special_ids == [0, 1, 2, 3]


# ---- segmentation against an independent reference ---------------------------------------


def brute_force_ids(text: str, pieces: dict[str, float], id_of: dict[str, int]) -> list[int]:
    """Every way to cut `text` into vocabulary pieces or lone uncovered characters, scored as
    PFN scores them (integers of score * 1e4, -1e7 per uncovered character); the highest total
    wins, ties going to the split whose piece lengths are lexicographically largest."""
    best_key, best_parts = None, None
    n = len(text)
    for cuts in itertools.product((False, True), repeat=max(n - 1, 0)):
        bounds = [0] + [i + 1 for i, cut in enumerate(cuts) if cut] + [n]
        parts = [text[a:b] for a, b in itertools.pairwise(bounds)]
        total = 0
        for part in parts:
            if part in pieces:
                total += round(pieces[part] * 1e4)
            elif len(part) == 1:
                total += -10_000_000
            else:
                break
        else:
            key = (total, [len(part) for part in parts])
            if best_key is None or key > best_key:
                best_key, best_parts = key, parts
    ids: list[int] = []
    for part in best_parts or []:
        if part in pieces:
            ids.append(id_of[part])
        else:
            ids.extend(id_of[f"<0x{b:02X}>"] for b in part.encode("utf-8"))
    return ids


piece_strategy = st.dictionaries(
    st.text(alphabet="abc", min_size=1, max_size=3),
    st.sampled_from([-1.0, -1.5, -2.0, -2.5, -3.0, -0.5, -4.25]),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(pieces=piece_strategy, text=st.text(alphabet="abcdé", max_size=8))
def test_segmentation_matches_brute_force(pieces: dict[str, float], text: str) -> None:
    tok = make_tokenizer(pieces)
    id_of = tok.get_vocab()
    assert tok.encode(text, add_special_tokens=False) == brute_force_ids(text, pieces, id_of)


def test_ties_go_to_the_longer_piece_at_the_earliest_position() -> None:
    tok = make_tokenizer({"a": -1.0, "b": -1.0, "c": -1.0, "ab": -2.0, "bc": -2.0})
    # [ab, c], [a, bc] and [a, b, c] all total -3.
    assert tok.tokenize("abc") == ["ab", "c"]


def test_scores_compare_after_rounding_to_1e4() -> None:
    # -2.00004 rounds to -2.0000, tying a + b; unrounded, [a, b] would win.
    tok = make_tokenizer({"a": -1.0, "b": -1.0, "ab": -2.00004})
    assert tok.tokenize("ab") == ["ab"]
    tok = make_tokenizer({"a": -1.0, "b": -1.0, "ab": -2.0001})
    assert tok.tokenize("ab") == ["a", "b"]


def test_best_segmentation_marks_uncovered_characters() -> None:
    tok = make_tokenizer({"ab": -1.0})
    assert best_segmentation("abxab", tok._trie) == [(2, 260), (1, -1), (2, 260)]


# ---- control tokens, byte fallback, round trips -------------------------------------------


def test_control_tokens_mid_text_are_single_ids(tok: Plamo3Tokenizer) -> None:
    text = "the tool<|plamo:tag|>user<|plamo:msg|>hi<|plamo:eos|>end"
    ids = tok.encode(text, add_special_tokens=False)
    assert ids.count(16) == 1 and ids.count(19) == 1 and ids.count(tok.eos_token_id) == 1
    pieces = tok.convert_ids_to_tokens(ids)
    assert "<|plamo:tag|>" in pieces and "<|plamo:msg|>" in pieces
    assert tok.decode(ids) == text


def test_control_pattern_not_in_vocabulary_is_isolated_but_split(tok: Plamo3Tokenizer) -> None:
    marker = "<|plamo:begin_think:plamo|>"
    ids = tok.encode("x" + marker + "the", add_special_tokens=False)
    alone = tok.encode(marker, add_special_tokens=False)
    assert len(alone) > 1
    # Nothing merges across the marker's edges: the three stretches encode independently.
    pieces = [tok.encode(part, add_special_tokens=False) for part in ("x", marker, "the")]
    assert ids == pieces[0] + pieces[1] + pieces[2]
    assert tok.decode(ids) == "x" + marker + "the"


def test_byte_fallback_for_uncovered_characters(tok: Plamo3Tokenizer) -> None:
    ids = tok.encode("a😀日", add_special_tokens=False)
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces == ["a", "<0xF0>", "<0x9F>", "<0x98>", "<0x80>", "<0xE6>", "<0x97>", "<0xA5>"]
    assert tok.decode(ids) == "a😀日"


def test_decode_replaces_invalid_utf8(tok: Plamo3Tokenizer) -> None:
    byte = tok.convert_tokens_to_ids
    assert tok.decode([byte("<0xF0>"), byte("<0x9F>")]) == "\ufffd"
    assert tok.decode([byte("<0xFF>"), byte("a")]) == "\ufffda"
    assert tok.decode([byte("<0xC3>"), byte("<0xA9>")]) == "é"


def test_special_tokens_added_and_skipped(tok: Plamo3Tokenizer) -> None:
    ids = tok.encode("the end")
    assert ids[0] == tok.bos_token_id and tok.eos_token_id not in ids
    assert tok.encode("the end", add_special_tokens=False) == ids[1:]
    text = "<|plamo:bos|>hi<|plamo:tag|><|plamo:pad|>"
    assert tok.decode(tok.encode(text), skip_special_tokens=True) == "hi<|plamo:tag|>"


def test_id_conversions(tok: Plamo3Tokenizer) -> None:
    assert tok.convert_ids_to_tokens(tok.convert_tokens_to_ids(["the", " the"])) == ["the", " the"]
    with pytest.raises(KeyError, match="not a piece"):
        tok.convert_tokens_to_ids("<|plamo:nope|>")
    with pytest.raises(IndexError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])


def test_lone_surrogate_is_a_clear_error(tok: Plamo3Tokenizer) -> None:
    with pytest.raises(ValueError, match="lone surrogate"):
        tok.encode("a\ud800b")


fragments = st.sampled_from(
    ["<|plamo:", "tag|>", "<|plamo:msg|>", "|>", " ", "  ", "the", "é", "😀", "\n", "\uee00", "{"]
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.one_of(st.text(), st.lists(fragments, max_size=12).map("".join)))
def test_round_trip_arbitrary_unicode(tok: Plamo3Tokenizer, text: str) -> None:
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


# ---- break_around thresholds --------------------------------------------------------------


def test_repeated_character_runs_are_isolated() -> None:
    pieces = {"a": -1.0, "b": -1.0, "ab": -0.5}
    assert make_tokenizer(pieces).tokenize("aab") == ["a", "ab"]
    config = {"break_around_repeated_chars_threshold": 2}
    assert make_tokenizer(pieces, config).tokenize("aab") == ["a", "a", "b"]


def test_runs_inside_a_control_are_isolated_like_pfn() -> None:
    # PFN finds break runs after marking the `<|plamo:...|>` matches, so a control that is a
    # piece but holds a long run is not one token; a special token stays whole.
    tag = "<|plamo:aaaaaaaa|>"
    pieces = {tag: 0.0, "<|plamo:": -1.0, "|>": -1.0, "a": -1.0}
    assert make_tokenizer(pieces).tokenize(tag) == [tag]
    config = {"break_around_repeated_chars_threshold": 8}
    assert make_tokenizer(pieces, config).tokenize(tag) == ["<|plamo:", *"aaaaaaaa", "|>"]
    assert make_tokenizer(pieces, {**config, "bos_token": tag}).tokenize(tag) == [tag]


def test_space_runs_are_isolated() -> None:
    pieces = {" ": -1.0, "x": -1.0, "  x": -0.5}
    assert make_tokenizer(pieces).tokenize("  x") == ["  x"]
    config = {"break_around_consecutive_spaces_threshold": 2}
    assert make_tokenizer(pieces, config).tokenize("  x") == [" ", " ", "x"]


# ---- file errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('["x", -1.0, "NORMAL"', "not valid JSON"),
        ('{"piece": "x"}', r"\[piece, score, kind\]"),
        ('["x", "high", "NORMAL"]', "score must be a number"),
        ('["x", -1.0, "WEIRD"]', "unknown kind 'WEIRD'"),
        ('["<0xZZ>", 0.0, "BYTE"]', "BYTE piece must look like"),
        ('["<|plamo:bos|>", 0.0, "CONTROL"]', "repeats line 2"),
    ],
)
def test_malformed_jsonl_names_file_and_line(tmp_path: Path, bad_line: str, message: str) -> None:
    path = write_jsonl(tmp_path, [*SPECIALS, bad_line, *BYTES])
    with pytest.raises(TokenizerFileError, match=message) as err:
        Plamo3Tokenizer.from_pretrained(path)
    assert f"{path / 'tokenizer.jsonl'}:5:" in str(err.value)


def test_missing_byte_pieces_are_named(tmp_path: Path) -> None:
    rows = [row for row in SPECIALS + BYTES if row[0] not in ("<0x00>", "<0x7F>")]
    with pytest.raises(TokenizerFileError, match=r"2 byte pieces missing \(<0x00>, <0x7F>\)"):
        Plamo3Tokenizer.from_pretrained(write_jsonl(tmp_path, rows))


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path, SPECIALS + BYTES)
    config = path / "tokenizer_config.json"
    config.write_text(json.dumps({"eos_token": "<|plamo:tag|>"}))
    with pytest.raises(TokenizerFileError, match="key 'eos_token' names '<\\|plamo:tag\\|>'"):
        Plamo3Tokenizer.from_pretrained(path)
    config.write_text(json.dumps({"added_tokens_decoder": {"1": {"content": "<|plamo:eos|>"}}}))
    with pytest.raises(TokenizerFileError, match=r"added_tokens_decoder\.1"):
        Plamo3Tokenizer.from_pretrained(path)
    config.write_text('{\n  "add_bos_token": true,\n}')
    with pytest.raises(TokenizerFileError, match=r"tokenizer_config\.json:3: not valid JSON"):
        Plamo3Tokenizer.from_pretrained(path)
    config.write_text(json.dumps({"break_around_repeated_chars_threshold": 0}))
    with pytest.raises(TokenizerFileError, match="break_around_repeated_chars_threshold"):
        Plamo3Tokenizer.from_pretrained(path)


def test_missing_vocabulary_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.jsonl"):
        Plamo3Tokenizer.from_pretrained(tmp_path)
