"""`danlu prepare`: wikitext extraction, cleaning, deduplication, tokenizers (English and Chinese),
token shards, stats, and clear errors for bad corpora."""

import bz2
import json
from pathlib import Path

import numpy as np
import pytest

from danlu.cli import main
from danlu.data.clean import clean_document, normalize, split_sentences
from danlu.data.dedup import Deduplicator
from danlu.data.prepare import PrepareArgs, prepare
from danlu.data.wikitext import iter_articles, wikitext_to_plain
from danlu.errors import DanluError

ASSETS = Path(__file__).parent / "assets"
EN, ZH = ASSETS / "en_sample.txt", ASSETS / "zh_sample.txt"

WIKITEXT = """{{Infobox river|name=Test River|length=600 km}}
The '''Test River''' is a [[river]] in [[Examplestan|the north]] of the country.<ref>{{cite web|url=http://x}}</ref> It flows east for 600 kilometres.
[[File:River.jpg|thumb|200px|The river in spring]]
{| class="wikitable"
|-
| cell one || cell two
|}
== History ==
Farmers have grown wheat on its banks since ancient times, according to records.
* a list item that is not prose
== References ==
{{reflist}}
Some reference text that must not appear in the output.
== External links ==
* [http://example.com Official site]
[[Category:Rivers]]
[[de:Testfluss]]"""


def wiki_dump(tmp_path: Path) -> Path:
    pages = [("Test River", 0, False, WIKITEXT), ("Old name", 0, True, "#REDIRECT [[Test River]]"),
             ("Talk:Test River", 1, False, "This is a talk page with enough words to pass filters.")]
    xml = ['<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">']
    for title, ns, redirect, text in pages:
        text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        marker = '<redirect title="x" />' if redirect else ""
        xml.append(f"<page><title>{title}</title><ns>{ns}</ns>{marker}"
                   f"<revision><text>{text}</text></revision></page>")
    xml.append("</mediawiki>")
    path = tmp_path / "dump.xml.bz2"
    path.write_bytes(bz2.compress("\n".join(xml).encode()))
    return path


def test_wikitext_keeps_prose_and_drops_markup(tmp_path):
    plain = wikitext_to_plain(WIKITEXT)
    assert plain.splitlines() == [
        "The Test River is a river in the north of the country. It flows east for 600 kilometres.",
        "Farmers have grown wheat on its banks since ancient times, according to records."]
    assert list(iter_articles(wiki_dump(tmp_path))) == [plain]  # the redirect and the talk page are skipped


def test_cleaning_normalises_and_filters():
    assert normalize("ＡＢＣ\u00a0１２３\x07 a\u200bb\r\n\n\n\nnext  line ") == "ABC 123 ab\n\nnext line"
    text = "A real paragraph about rivers and farms.\nAccept all cookies\nAll rights reserved 2024"
    assert clean_document(text, 10) == "A real paragraph about rivers and farms."
    assert clean_document("too short", 50) is None
    doc = "First sentence. Second one! 第三句。第四句？Last line\nnew line"
    sentences = split_sentences(doc)
    assert "".join(sentences) == doc
    assert sentences == ["First sentence.", " Second one!", " 第三句。", "第四句？", "Last line", "\nnew line"]


def test_exact_and_near_duplicates():
    base = EN.read_text().split("\n\n")[0]
    near = base.replace("six hundred", "seven hundred")
    dedup = Deduplicator("near", threshold=0.8)
    results = [dedup.is_duplicate(t) for t in [base, base.upper(), near, EN.read_text().split("\n\n")[1]]]
    assert results == [False, True, True, False] and (dedup.exact, dedup.near) == (1, 1)
    exact_only = Deduplicator("exact")
    assert [exact_only.is_duplicate(t) for t in [base, near, base]] == [False, False, True]


def run_prepare(tmp_path, *corpus, **kwargs) -> tuple[Path, dict]:
    out = tmp_path / kwargs.pop("name", "prepared")
    prepare(PrepareArgs(corpus=[str(c) for c in corpus], out=str(out), **kwargs))
    return out, json.loads((out / "stats.json").read_text())


def test_prepare_english_files_into_shards(tmp_path, capsys):
    docs = EN.read_text().split("\n\n")
    # The same corpus as .txt + .jsonl (with one exact and one near duplicate) + .parquet, and a short doc.
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in
                                                [docs[0], docs[0], docs[1].replace("Tea", "Tea leaves"), "tiny"]))
    pq.write_table(pa.table({"text": ["Click here to subscribe", docs[2] + " Extra words at the end."]}),
                   tmp_path / "b.parquet")
    out, stats = run_prepare(tmp_path, EN, tmp_path / "a.jsonl", tmp_path / "b.parquet", vocab_size=600,
                             seq_len=32, val_ratio=0.2, min_length=30)
    printed = capsys.readouterr().out
    assert stats["documents_in"] == 12 + 4 + 2
    assert stats["too_short"] == 2  # "tiny" and the boilerplate line
    assert (stats["duplicates_exact"], stats["duplicates_near"]) == (2, 2)  # docs[0] is also in en_sample.txt
    assert stats["documents_out"] == 12 and stats["documents"] == {"train": 10, "validation": 2}
    assert stats["unk_rate"] == {"train": 0.0, "validation": 0.0}  # byte-level BPE never needs [UNK]
    assert 0 < stats["vocab_coverage"] <= 1 and stats["vocab_size"] <= 600
    assert stats["unigram_entropy"] < stats["unigram_cross_entropy"] < np.log(600)
    assert "12 out (10 train / 2 validation)" in printed and "2 exact, 2 near" in printed
    meta = json.loads((out / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["separator_id"] == 3
    manifest = json.loads((out / "danlu.json").read_text())
    assert manifest["stage"] == "prepare" and manifest["metrics"]["documents_out"] == 12

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    decoded = []
    for split in ("train", "validation"):
        (shard,) = meta["splits"][split]
        tokens = np.memmap(out / shard["tokens"], dtype=np.uint16, mode="r")
        offsets = np.load(out / shard["documents"])
        assert len(tokens) == shard["num_tokens"] == stats["tokens"][split]
        assert all(tokens[e - 1] == 3 for e in offsets[1:])  # each document ends with the separator
        decoded += [tokenizer.decode(tokens[b:e - 1]) for b, e in zip(offsets[:-1], offsets[1:])]
    assert sorted(decoded) == sorted(d.strip() for d in docs[:12])  # byte-level BPE: the exact text comes back


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "unigram"])
def test_chinese_is_split_by_character_without_unknown_flood(tmp_path, kind):
    out, stats = run_prepare(tmp_path, ZH, tokenizer=kind, vocab_size=2000, seq_len=32, val_ratio=0.2)
    assert stats["documents_out"] == 15 and stats["documents"]["validation"] == 3
    assert stats["unk_rate"]["train"] == 0.0
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    tokens = tokenizer.tokenize("长江是中国第一长河")
    assert len(tokens) <= 10 and "[UNK]" not in tokens  # about one token per character
    # 龘 is in no training text. WordPiece (BERT) gives it one [UNK] and leaves its neighbours alone
    # (without CJK splitting the whole run 长龘江 would be one unknown word); byte-level BPE and
    # Unigram with byte fallback spell it in UTF-8 bytes and decode it back.
    ids = tokenizer("长龘江", add_special_tokens=False)["input_ids"]
    pieces = [t for t in tokenizer.convert_ids_to_tokens(ids) if t != "▁"]
    if kind == "wordpiece":
        assert pieces == ["长", "[UNK]", "江"]
        assert stats["unk_rate"]["validation"] < 0.3  # only the validation characters never seen in training
    else:
        assert len(pieces) == 5 and tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids).replace(" ", "") == "长龘江"
        assert stats["unk_rate"]["validation"] == 0.0
        assert stats["characters_per_token"] > 0.8


def test_existing_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    from danlu.assets import resolve_model

    out, stats = run_prepare(tmp_path, EN, tokenizer="minilm-l6", seq_len=32, val_ratio=0.2)
    meta = json.loads((out / "meta.json").read_text())
    reference = AutoTokenizer.from_pretrained(str(resolve_model("minilm-l6")))
    assert meta["tokenizer"] == {"kind": "existing", "source": "minilm-l6", "trained": False}
    assert meta["vocab_size"] == len(reference) and meta["separator_id"] == reference.sep_token_id
    first = EN.read_text().split("\n\n")
    tokens = np.memmap(out / meta["splits"]["train"][0]["tokens"], dtype=np.uint16, mode="r")
    offsets = np.load(out / meta["splits"]["train"][0]["documents"])
    doc = tokens[offsets[0]:offsets[1] - 1].tolist()
    assert any(doc == reference(t, add_special_tokens=False)["input_ids"] for t in first)


def test_bad_corpora_are_clear_errors(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(DanluError, match="the corpus is empty"):
        run_prepare(tmp_path, empty)
    short = tmp_path / "short.txt"
    short.write_text("One small paragraph of text, long enough to pass the length filter.\n")
    with pytest.raises(DanluError, match="smaller than one sequence: .* fewer than --seq-len 512"):
        run_prepare(tmp_path, short, vocab_size=300, seq_len=512, val_ratio=0)
    with pytest.raises(DanluError, match="no documents left after cleaning: 1 read, 1 shorter than --min-length"):
        run_prepare(tmp_path, short, min_length=1000)
    with pytest.raises(DanluError, match="--vocab-size 100 is too small for a bpe tokenizer: it needs at least 261"):
        run_prepare(tmp_path, EN, vocab_size=100)
    with pytest.raises(DanluError, match="--vocab-size 120 is too small: the corpus's alphabet alone needs"):
        run_prepare(tmp_path, ZH, tokenizer="wordpiece", vocab_size=120)
    assert main(["prepare", "wiki-sampel", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "unknown corpus 'wiki-sampel'" in err and "did you mean 'wiki-sample'?" in err
    assert not (tmp_path / "prepared").exists()  # nothing half-written
