import pytest

from danlu.data.classification import load_classification
from danlu.errors import DanluError


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_malformed_csv_row_names_file_and_line(tmp_path):
    path = write(tmp_path, "a.csv", "text,label\ngood,pos\nbad,neg,extra\n")
    with pytest.raises(DanluError, match=r"a.csv:3: malformed row: 3 fields where the header has 2"):
        load_classification(str(path))


def test_malformed_jsonl_line(tmp_path):
    path = write(tmp_path, "a.jsonl", '{"text": "x", "label": "a"}\n{"text": oops}\n')
    with pytest.raises(DanluError, match=r"a.jsonl:2: malformed JSON line"):
        load_classification(str(path))


def test_unknown_column_lists_columns(tmp_path):
    path = write(tmp_path, "a.csv", "review,stars\ngood,5\nbad,1\n")
    with pytest.raises(DanluError, match=r"no column 'text' \(set --text-column\); columns: review, stars"):
        load_classification(str(path))


def test_empty_text_and_single_class(tmp_path):
    path = write(tmp_path, "a.csv", "text,label\ngood,pos\n  ,neg\n")
    with pytest.raises(DanluError, match=r"a.csv:3: empty text in column 'text'"):
        load_classification(str(path))
    path = write(tmp_path, "b.csv", "text,label\ngood,pos\nfine,pos\n")
    with pytest.raises(DanluError, match="has one class \\('pos'\\)"):
        load_classification(str(path))


def test_unknown_data_name_lists_known():
    with pytest.raises(DanluError, match="did you mean 'rotten-tomatoes'"):
        load_classification("rotten-tomato")


def test_split_is_stratified_and_seeded(sentiment_csv):
    a = load_classification(str(sentiment_csv), seed=3)
    b = load_classification(str(sentiment_csv), seed=3)
    assert a.split_info["sizes"] == {"train": 96, "validation": 12, "test": 12}
    assert a.splits["test"].texts == b.splits["test"].texts
    assert a.splits["test"].labels.count("pos") == 6
    assert a.labels == ["neg", "pos"]


def test_rotten_tomatoes_drops_plot_rows():
    data = load_classification("rotten-tomatoes")
    assert data.labels == ["fresh", "rotten"]
    assert sum(data.split_info["sizes"].values()) == 12808


def test_artifacts_are_written_with_ordinary_permissions(tmp_path):
    import os
    import stat

    from danlu.artifact import atomic_dir, atomic_write_text

    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "art") as tmp:
            (tmp / "x").write_text("1")
        atomic_write_text(tmp_path / "art" / "danlu.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "art").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "art" / "danlu.json").stat().st_mode) == 0o644
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind
