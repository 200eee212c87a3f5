"""Every report kind, written by tiny real runs, opened in headless Chromium (tests/browser.py): no
console error, no network request, the key figures in the DOM as text, a screenshot for a reviewer."""

import json
import re
from pathlib import Path

import pytest
from browser import open_page

from danlu.cli import main
from danlu.report.page import format_value


def manifest_of(folder: Path) -> dict:
    return json.loads((folder / "danlu.json").read_text())


def check_page(html: Path, screenshot: Path):
    """What every report must be, in the browser: the visit, for the test's own checks."""
    text = html.read_text()
    assert "<pre>" not in text and "**" not in text and "| ---" not in text  # no raw Markdown
    assert not re.search(r'(src|href)="(https?:)?//', text)  # nothing fetched from a network
    return open_page(html, screenshot)


def assert_common(visit, lineage_names: list[str]):
    assert visit.problems() == []
    headings = visit.texts("h2")
    assert headings[-1] == "Arguments" and (not lineage_names or headings[-2] == "Lineage")
    assert visit.texts(".lineage a") == lineage_names
    for href in visit.page.eval_on_selector_all(".lineage a", "links => links.map(a => a.href)"):
        assert Path(href.removeprefix("file://")).exists(), href  # links resolve from where the page is
    assert visit.screenshot.stat().st_size > 10_000


@pytest.fixture(scope="module")
def evaluated(tracked_classifier, sentiment_csv) -> Path:
    assert main(["evaluate", str(tracked_classifier), "--data", str(sentiment_csv), "--split", "validation"]) == 0
    return tracked_classifier / "eval-validation.html"


@pytest.fixture(scope="module")
def pretrained(prepared, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report-pretrain") / "bert"
    assert main(["pretrain", "--data", str(prepared), "--out", str(out), "--objective", "mlm+nsp", "--max-steps", "6",
                 "--lr", "2e-3", "--seq-len", "32", "--batch-size", "8", "--log-every", "1", "--eval-every", "3",
                 "--eval-sequences", "16", "--report-to", "tensorboard"]) == 0
    return out


@pytest.fixture(scope="module")
def compressed(tracked_classifier, sentiment_csv, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report-compress") / "search"
    assert main(["compress", str(tracked_classifier), "--eval-data", str(sentiment_csv), "--out", str(out),
                 "--methods", "bf16", "int8-dynamic", "--repeats", "1", "--latency-samples", "2",
                 "--throughput-batches", "1", "--max-accuracy-drop", "100", "--objective", "size"]) == 0
    return out


def test_finetune_report_in_the_browser(tracked_classifier, tiny_bert, tmp_path):
    test = manifest_of(tracked_classifier)["metrics"]["test"]
    with check_page(tracked_classifier / "report.html", tmp_path / "finetune.png") as visit:
        assert_common(visit, [tiny_bert.name])
        names, values = visit.texts(".headline .name"), visit.texts(".headline .value")
        assert names[:3] == ["accuracy", "macro-F1", "loss"]  # the primary metric first
        assert values[0] == f"{test['accuracy']:.4f}" and values[1] == f"{test['macro_f1']:.4f}"
        assert visit.texts("h2")[:3] == ["Per class", "Confusion matrix", "Training curve"]
        per_class = visit.texts("section:has(h2:text('Per class')) tbody tr")
        assert per_class[0].split("\t")[0] == "neg"
        assert f"{test['per_class']['neg']['precision']:.3f}" in per_class[0]
        cells = visit.texts(".heatmap tbody td")
        assert cells == [str(n) for row in test["confusion_matrix"]["matrix"] for n in row]
        colours = visit.page.eval_on_selector_all(".heatmap tbody td", "tds => tds.map(td => td.style.background)")
        assert len(set(colours)) > 1  # coloured by value
        assert visit.page.get_attribute("figure img", "src").startswith("data:image/png;base64,")
        steps = [e["step"] for e in map(json.loads, (tracked_classifier / "metrics.jsonl").read_text().splitlines())
                 if "eval_accuracy" in e]
        validation = visit.texts("section:has(h2:text('Validation during training')) tbody th")
        assert validation == [str(s) for s in steps]
        assert "lr\t0.003" in visit.texts(".arguments tr")


def test_evaluate_report_in_the_browser(evaluated, tracked_classifier, tiny_bert, tmp_path):
    result = json.loads(evaluated.with_suffix(".json").read_text())
    assert evaluated.with_suffix(".md").exists()
    with check_page(evaluated, tmp_path / "evaluate.png") as visit:
        assert_common(visit, [tracked_classifier.name, tiny_bert.name])
        assert visit.texts(".headline .value")[0] == f"{result['accuracy']:.4f}"
        assert "validation, 12 examples" in visit.texts(".headline .note")[0]
        assert visit.texts(".heatmap tbody td") == [str(n) for row in result["confusion_matrix"]["matrix"] for n in row]


def test_pretrain_report_in_the_browser(pretrained, tmp_path):
    metrics = manifest_of(pretrained)["metrics"]
    with check_page(pretrained / "report.html", tmp_path / "pretrain.png") as visit:
        assert_common(visit, [])  # random weights: no parent
        figures = dict(zip(visit.texts(".headline .name"), visit.texts(".headline .value")))
        assert figures["loss"] == f"{metrics['validation']['loss']:.4f}"
        assert figures["NSP accuracy"] == f"{metrics['validation']['nsp_accuracy']:.4f}"
        assert figures["unigram baseline"] == f"{metrics['unigram_entropy']:.4f}"
        assert visit.texts("section:has(h2:text('Validation during training')) tbody th") == ["3", "6"]
    assert "unigram baseline" in (pretrained / "report.md").read_text()


def test_pretrain_reports_to_tensorboard(pretrained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(pretrained / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    assert [e.step for e in events.Scalars("eval/nsp_accuracy")] == [3, 6]
    validation = manifest_of(pretrained)["metrics"]["validation"]
    assert events.Scalars("validation/loss")[0].value == pytest.approx(validation["loss"])  # the final metrics


def test_compress_report_in_the_browser(compressed, tracked_classifier, tiny_bert, tmp_path):
    results = json.loads((compressed / "results.json").read_text())
    chosen = results["chosen"]["variant"]
    with check_page(compressed / "report.html", tmp_path / "compress.png") as visit:
        assert_common(visit, [tracked_classifier.name, tiny_bert.name])
        assert visit.texts(".headline .value")[0] == chosen
        assert visit.texts(".verdict") == [results["verdict"]]
        assert visit.texts("h2")[:2] == ["Accuracy vs latency", "Variants"]
        rows = visit.texts("section:has(h2:text('Variants')) tbody th")
        assert [r.split(" (chosen)")[0] for r in rows] == [r["variant"] for r in results["rows"]]
        assert visit.texts("tr.chosen th") == [f"{chosen} (chosen)"]
        by_name = {r["variant"]: r for r in results["rows"]}
        int8 = visit.texts("section:has(h2:text('Variants')) tbody tr")[2].split("\t")
        assert int8[2] == f"{by_name['int8-dynamic']['quality']:.4f}"
        assert int8[-3] == f"{by_name['int8-dynamic']['size_mb']:.2f}"
    markdown = (compressed / "report.md").read_text()
    assert "| variant | status | accuracy | drop (pts) |" in markdown and f"**{chosen}** (chosen)" in markdown
    assert (compressed / "pareto.png").stat().st_size > 1000


NER_MANIFEST = {
    "task": "ner", "stage": "finetune", "primary_metric": "f1", "labels": ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"],
    "parent": None, "args": {"out": "runs/ner", "lr": 5e-5},
    "metrics": {"test": {"f1": 0.6123, "precision": 0.6501, "recall": 0.5787, "accuracy": 0.9412, "examples": 240,
                         "per_type": {"PER": {"precision": 0.71, "recall": 0.66, "f1": 0.684, "support": 120},
                                      "LOC": {"precision": 0.58, "recall": 0.49, "f1": 0.531, "support": 97}}},
                "best_validation": {"f1": 0.6, "loss": 0.3}, "best_step": 20, "steps": 30,
                "train_examples_per_second": 41.5},
    "data": {"source": "wnut-ner"}, "created": "2026-11-29T10:00:00+0000"}
NER_HISTORY = [{"step": s, "epoch": s / 10, "loss": 2 / s, "lr": 5e-5, "grad_norm": 1.0} for s in range(1, 31)] + [
    {"step": s, "eval_f1": 0.3 + s / 100, "eval_loss": 1 / s} for s in (10, 20, 30)]


def test_ner_report_leads_with_f1_and_has_the_entity_types(tmp_path):
    from danlu.report.training import write_training_report

    write_training_report(tmp_path, NER_MANIFEST, NER_HISTORY)
    markdown = (tmp_path / "report.md").read_text()
    assert markdown.index("- F1 **0.6123**") < markdown.index("- precision **0.6501**")
    assert "| PER | 0.710 | 0.660 | 0.684 | 120 |" in markdown and "Confusion" not in markdown
    assert "validation F1" in markdown
    with check_page(tmp_path / "report.html", tmp_path / "ner.png") as visit:
        assert_common(visit, [])
        assert visit.texts(".headline .name")[0] == "F1" and visit.texts(".headline .value")[0] == "0.6123"
        types = visit.texts("section:has(h2:text('Per entity type')) tbody tr")
        assert [t.split("\t")[0] for t in types] == ["PER", "LOC"] and "0.531" in types[1]


def test_qa_report_and_older_manifests_fall_back_to_accuracy(tmp_path):
    from danlu.report.training import training_page

    qa = {**NER_MANIFEST, "task": "qa", "primary_metric": "exact_match",
          "metrics": {"test": {"f1": 0.71, "exact_match": 0.62, "examples": 50}, "steps": 3}}
    page = training_page(tmp_path, qa, [])
    assert [(m.name, m.value) for m in page.headline] == [("exact match", "0.6200"), ("F1", "0.7100")]
    assert [s.title for s in page.sections] == ["Training curve"]
    old = {**qa, "metrics": {"test": {"macro_f1": 0.5, "accuracy": 0.9, "examples": 4}}}
    del old["primary_metric"]
    assert training_page(tmp_path, old, []).headline[0].name == "accuracy"


def test_markdown_keeps_tables_readable_and_escapes_pipes(tmp_path):
    from danlu.report.page import Page, Section, Table, write_page

    page = Page("t", sections=[Section("s", table=Table(["a", "b"], [["x|y", "1"], ["z", "2"]], 1, "(chosen)"))])
    html, md = write_page(tmp_path, page)
    assert "| a | b |\n|---|---|\n| x\\|y | 1 |\n| **z** (chosen) | 2 |\n" in md.read_text()
    assert "<th scope=\"row\">x|y</th>" in html.read_text()


def test_format_value():
    assert [format_value(v) for v in (0.83841, 1281, 5e-05, 12345.678, None, True)] == [
        "0.8384", "1,281", "5e-05", "12,345.7", "", "yes"]
