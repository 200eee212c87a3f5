"""The explain and attack pages in a real browser: Debian's headless Chromium driven by Playwright
(`executable_path` set to the system binary; `playwright install` is never run). The page must load with no
console error and no network request, show one heat-map element per token carrying its attribution, and
redraw the token-to-token view when the head changes. A screenshot is kept in pytest's tmp dir."""

import json
import shutil

import pytest

from danlu.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make setup)")


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def open_page(browser, path):
    """The page, with every console error and every request that is not the file itself collected."""
    page = browser.new_page()
    errors, requests = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url) if r.url != path.as_uri() else None)
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    return page, errors, requests


def attention_values(page):
    return page.eval_on_selector_all("#attn td", "cells => cells.map(c => c.dataset.value)")


def test_explain_page_in_chromium(browser, tiny_bert, tmp_path):
    out = tmp_path / "explain.html"
    assert main(["explain", str(tiny_bert), "a wonderful, moving film that drags", "--out", str(out),
                 "--steps", "8"]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    page, errors, requests = open_page(browser, out)
    tokens = page.query_selector_all("#heatmap .tok")
    assert len(tokens) == len(data["tokens"])
    for element, token, attribution in zip(tokens, data["tokens"], data["attributions"]):
        assert element.inner_text() == token
        assert float(element.get_attribute("data-attribution")) == pytest.approx(attribution)
        assert element.get_attribute("title").startswith(f"{token}: ")
    n = len(data["tokens"])
    rollout = attention_values(page)
    assert len(rollout) == n * n
    page.select_option("#layer", index=1)  # layer 1 (after "rollout")
    page.select_option("#head", index=1)  # head 1 (after "mean")
    head0 = attention_values(page)
    page.select_option("#head", index=2)
    head1 = attention_values(page)
    assert head0 != head1 and head0 != rollout
    assert [float(v) for v in head1[:n]] == pytest.approx(data["attentions"][0][1][0], abs=1e-6)
    assert "layer 1, head 2" in page.inner_text("#attn-caption")
    page.screenshot(path=str(tmp_path / "explain.png"), full_page=True)
    assert (tmp_path / "explain.png").stat().st_size > 0
    assert errors == [] and requests == []


def heat_map(page):
    return page.eval_on_selector_all("#heatmap .tok", "spans => spans.map(s => [s.textContent, s.dataset.attribution, "
                                                      "s.classList.contains('at')])")


def test_ner_page_in_chromium_shows_each_entity(browser, tiny_ner, tmp_path):
    """A token classifier's page: one heat-map element per token; the entity selector redraws the heat map
    with that entity's attributions, outlines its token and shows its label probabilities."""
    out = tmp_path / "ner.html"
    assert main(["explain", str(tiny_ner), "Angela Merkel visited Paris", "--out", str(out), "--steps", "6"]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    page, errors, requests = open_page(browser, out)
    assert page.eval_on_selector_all("#target option", "o => o.map(x => x.textContent)") == [
        t["name"] for t in data["targets"]]
    views = []
    for index, target in enumerate(data["targets"]):
        page.select_option("#target", index=index)
        cells = heat_map(page)
        assert len(cells) == len(data["tokens"])
        assert [c[0] for c in cells] == data["tokens"]
        assert [float(c[1]) for c in cells] == pytest.approx(target["attributions"])
        assert [i for i, c in enumerate(cells) if c[2]] == [target["position"]]
        assert page.inner_text("#target-label") == target["label"]
        rows = page.eval_on_selector_all("#probs tr", "rows => rows.slice(1).map(r => r.cells[0].textContent)")
        assert rows == list(target["probabilities"])
        views.append([c[1] for c in cells])
    assert len({tuple(v) for v in views}) == len(views)  # each entity its own heat map
    page.screenshot(path=str(tmp_path / "ner.png"), full_page=True)
    assert (tmp_path / "ner.png").stat().st_size > 0
    assert errors == [] and requests == []


def test_decoder_page_in_chromium_marks_the_tokens_after_each_generated_one(browser, tiny_llama, tmp_path):
    """A decoder's page: each generated token's view colours only the tokens before it."""
    out = tmp_path / "decoder.html"
    assert main(["explain", str(tiny_llama), "The capital of France is", "--max-new-tokens", "2", "--out", str(out),
                 "--steps", "4"]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    page, errors, requests = open_page(browser, out)
    for index, target in enumerate(data["targets"]):
        page.select_option("#target", index=index)
        cells = heat_map(page)
        at = target["position"]
        assert [i for i, c in enumerate(cells) if c[2]] == [at]
        assert [c[1] for c in cells[at:]] == [""] * (len(cells) - at)
        assert [float(c[1]) for c in cells[:at]] == pytest.approx(target["attributions"][:at])
        assert page.eval_on_selector_all("#heatmap .tok.outside", "s => s.length") == len(cells) - at
    assert errors == [] and requests == []


def test_attack_page_in_chromium(browser, tiny_bert, sentiment_csv, tmp_path):
    from danlu.robust.report import attack_page

    report = {"artifact": "a", "data": "d", "split": "test", "recipe": "textfooler", "constraints": ["c"],
              "metrics": {"examples": 1, "attacked": 1, "successful": 1, "clean_accuracy": 1.0,
                          "accuracy_under_attack": 0.0, "attack_success_rate": 1.0,
                          "mean_fraction_words_changed": 0.25, "queries_per_example": 9.0,
                          "examples_per_second": 3.0},
              "results": [{"status": "success", "label": "pos", "prediction": "pos", "adversarial_prediction": "neg",
                           "changes": [{"index": 3, "from": "lovely", "to": "leggy"}], "words": 4, "queries": 9,
                           "original_pieces": [["the film was ", False], ["lovely", True]],
                           "adversarial_pieces": [["the film was ", False], ["leggy", True]]}]}
    path = tmp_path / "attack.html"
    path.write_text(attack_page(report))
    page, errors, requests = open_page(browser, path)
    assert page.inner_text("#examples mark.from") == "lovely"
    assert page.inner_text("#examples mark.to") == "leggy"
    page.screenshot(path=str(tmp_path / "attack.png"), full_page=True)
    assert errors == [] and requests == []
