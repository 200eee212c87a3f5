import json

import pytest

from danlu.data.chat import load_chat, read_conversations, seeded_split
from danlu.errors import DanluError


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_alpaca_json_array_with_system_and_history(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([
        {"instruction": "Add.", "input": "2 and 3", "output": "5"},
        {"instruction": "And now?", "output": "7", "system": "Be terse.", "history": [["Add 3 and 4", "7"]]},
    ], indent=1), encoding="utf-8")
    first, second = read_conversations(path)
    assert first == [{"role": "user", "content": "Add.\n\n2 and 3"}, {"role": "assistant", "content": "5"}]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user", "assistant"]
    assert second[0]["content"] == "Be terse." and second[-1]["content"] == "7"


def test_chat_jsonl_multi_turn_and_summary_rows(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                      {"role": "user", "content": "bye"}, {"role": "assistant", "content": "ciao"}]},
        {"document": "A long text.", "summary": "Short."},
    ])
    chat, summary = read_conversations(path)
    assert len(chat) == 4 and chat[3]["content"] == "ciao"
    assert "A long text." in summary[0]["content"] and summary[1] == {"role": "assistant", "content": "Short."}


@pytest.mark.parametrize("row, message", [
    ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
    ({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"},
                   {"role": "assistant", "content": "c"}]}, "roles out of order"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                   {"role": "assistant", "content": "c"}]}, "roles out of order"),
    ({"instruction": "Say hi", "input": ""}, "Alpaca row without 'output'"),
    ({"messages": [{"role": "robot", "content": "a"}]}, "message 1 must be"),
])
def test_bad_rows_name_file_and_line(tmp_path, row, message):
    good = {"instruction": "x", "output": "y"}
    path = write_jsonl(tmp_path / "bad.jsonl", [good, good, row])
    with pytest.raises(DanluError, match=rf"bad.jsonl:3: .*{message}"):
        read_conversations(path)


def test_bad_row_in_json_array_names_its_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"instruction": "x", "output": "y"},\n  {"instruction": "x"}\n]\n')
    with pytest.raises(DanluError, match=r"bad.json:3: Alpaca row without 'output'"):
        read_conversations(path)


def test_seeded_split_is_reproducible_and_disjoint():
    a, b = seeded_split(999, 42, 0.1, 0.1), seeded_split(999, 42, 0.1, 0.1)
    assert a == b and [len(a[s]) for s in ("train", "validation", "test")] == [799, 100, 100]
    assert not set(a["train"]) & set(a["test"]) and not set(a["validation"]) & set(a["test"])
    assert seeded_split(999, 7, 0.1, 0.1)["test"] != a["test"]


def test_unknown_data_suggests_packaged_names():
    with pytest.raises(DanluError, match="did you mean 'alpaca-en'"):
        load_chat("alpaca-em")


@pytest.mark.e2e
def test_packaged_alpaca_sizes():
    assert sum(load_chat("alpaca-en").split_info["sizes"].values()) == 999
    data = load_chat("alpaca-zh")
    assert sum(data.split_info["sizes"].values()) == 1000
    assert all(m[-1]["role"] == "assistant" for m in data.splits["train"])


def test_summarization_rows_become_a_summary_prompt_and_answer():
    from danlu.data.chat import row_conversation

    conversation = row_conversation({"id": "1", "document": "Storms hit the coast.", "summary": "Coast hit."}, "x")
    assert conversation[0]["content"].startswith("Summarize") and "Storms hit the coast." in conversation[0]["content"]
    assert conversation[1] == {"role": "assistant", "content": "Coast hit."}
    with pytest.raises(DanluError, match="x: a summarization row needs 'document' and 'summary'"):
        row_conversation({"document": "", "summary": "Nothing."}, "x")


def test_packaged_xsum_sample():
    from danlu.assets import list_assets
    from danlu.data.chat import load_chat

    data = load_chat("xsum-sample")
    assert sum(data.split_info["sizes"].values()) == 999  # 1,000 rows, one without a document dropped
    first = data.splits["test"][0]
    assert first[0]["content"].startswith("Summarize") and len(first[1]["content"].split()) < 80
    row = {r["name"]: r for r in list_assets()}["xsum-sample"]
    assert "research use" in row["terms"] and "only when asked" not in row["description"]


def test_assets_list_states_the_alpaca_terms():
    from danlu.assets import list_assets

    rows = {r["name"]: r for r in list_assets()}
    for name in ("alpaca-en", "alpaca-zh"):
        assert "non-commercial" in rows[name]["terms"] and rows[name]["kind"] == "data"
