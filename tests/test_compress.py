"""danlu compress and danlu export on a tiny fine-tuned BERT (and a tiny Llama for the decoder path)."""

import json
from pathlib import Path

import pytest
import torch

from danlu.cli import main


@pytest.fixture(scope="module")
def classifier(tiny_bert, sentiment_csv, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("compress") / "clf"
    assert main(["finetune", "--model", str(tiny_bert), "--data", str(sentiment_csv), "--out", str(out),
                 "--epochs", "4", "--lr", "3e-3", "--batch-size", "16", "--eval-every", "6", "--log-every", "6"]) == 0
    return out


# Test-only methods, reachable through the registry like real ones.
def flip_labels(job):
    """A variant that predicts the opposite label: far outside any accuracy budget."""
    from danlu.compress.variant import load_parent, write_variant

    model, _ = load_parent(job)
    head = model.classifier
    head.weight.data, head.bias.data = head.weight.data.flip(0).clone(), head.bias.data.flip(0).clone()
    return write_variant(job, "flip", lambda folder: model.save_pretrained(str(folder)))


def crash(job):
    raise RuntimeError("kaboom in the method")


@pytest.fixture(scope="module")
def search(classifier, sentiment_csv, tmp_path_factory):
    from danlu.compress import methods as methods_module

    methods_module.METHODS["boom"] = (__name__, "crash")
    out = tmp_path_factory.mktemp("search") / "out"
    code = main(["compress", str(classifier), "--eval-data", str(sentiment_csv), "--out", str(out),
                 "--methods", "bf16", "int8-dynamic", "int8-static", "onnx", "onnx-int8", "int4-weight-only", "boom", "boom+bf16",
                 "prune-structured", "prune-magnitude", "distill", "distill+int8-dynamic", "share-layers",
                 "prune-structured+int8-dynamic", "--repeats", "1", "--latency-samples", "2", "--throughput-batches", "1", "--train-max-steps", "3",
                 "--distill-layers", "1", "--hidden-weight", "0.5", "--calibration-samples", "32",
                 "--max-accuracy-drop", "100", "--objective", "size"])
    del methods_module.METHODS["boom"]
    assert code == 0
    return out, json.loads((out / "results.json").read_text())


def rows_by_name(results):
    return {r["variant"]: r for r in results["rows"]}


def test_every_method_gives_a_row_and_the_search_survives_a_crash(search):
    out, results = search
    rows = rows_by_name(results)
    assert [r["variant"] for r in results["rows"]][:3] == ["original", "bf16", "int8-dynamic"]
    for name in ["bf16", "int8-dynamic", "int8-static", "onnx", "onnx-int8", "prune-structured", "prune-magnitude",
                 "distill", "distill+int8-dynamic", "share-layers", "prune-structured+int8-dynamic"]:
        assert rows[name]["status"] == "ok", rows[name]
        assert rows[name]["examples"] == 12 and 0 <= rows[name]["accuracy"] <= 1
        assert rows[name]["latency_ms"] > 0 and rows[name]["throughput"] > 0 and rows[name]["peak_memory_mb"] > 0
    assert rows["boom"]["status"] == "failed" and rows["boom"]["reason"] == "RuntimeError: kaboom in the method"
    assert "kaboom" in Path(rows["boom"]["log"]).read_text()
    assert rows["boom+bf16"]["status"] == "skipped" and "boom failed above" in rows["boom+bf16"]["reason"]
    assert rows["int4-weight-only"]["status"] == "skipped" and "decod" in rows["int4-weight-only"]["reason"]


def test_sizes_and_structure_are_really_smaller(search):
    _, results = search
    rows = rows_by_name(results)
    original = rows["original"]
    assert rows["bf16"]["size_mb"] == pytest.approx(original["size_mb"] / 2, rel=0.02)
    assert rows["int8-dynamic"]["size_mb"] < 0.3 * original["size_mb"]  # int8 linears and int8 embeddings
    assert rows["prune-magnitude"]["size_mb"] == pytest.approx(original["size_mb"], rel=0.01)  # zeros stored dense
    assert rows["prune-structured"]["parameters"] < original["parameters"]
    assert rows["share-layers"]["parameters"] < original["parameters"]
    student = json.loads((Path(rows["distill"]["path"]) / "config.json").read_text())
    assert student["num_hidden_layers"] == 1
    from danlu.hardware import bf16_is_fast

    # --train-bf16 is on by default; the record says what the training really ran in (fp32 where bf16 is emulated).
    training = json.loads((Path(rows["distill"]["path"]) / "danlu.json").read_text())["compress_info"]["training"]
    assert training["precision"] == ("bf16" if bf16_is_fast() else "fp32")
    manifest = json.loads((Path(rows["distill+int8-dynamic"]["path"]) / "danlu.json").read_text())
    assert manifest["stage"] == "compress" and manifest["method"] == "int8-dynamic"
    assert manifest["parent"] == rows["distill"]["path"] and manifest["metrics"]["compress"]["accuracy"] >= 0


def test_choice_is_best_by_objective_within_budget_and_report_has_the_table(search):
    out, results = search
    ok = [r for r in results["rows"] if r["status"] == "ok" and r["within_budget"]]
    assert results["chosen"]["variant"] == min(ok, key=lambda r: r["size_mb"])["variant"]
    assert (out / "chosen").resolve() == Path(results["chosen"]["path"]).resolve()
    report = (out / "report.md").read_text()
    assert "| variant | status | accuracy | drop (pts) |" in report and f"**{results['chosen']['variant']}** (chosen)" in report
    assert "boom` failed: RuntimeError: kaboom" in report and "int4-weight-only` skipped" in report
    assert (out / "pareto.png").stat().st_size > 1000 and "data:image/png;base64" in (out / "report.html").read_text()


@pytest.mark.parametrize("variant", ["bf16", "int8-dynamic", "onnx", "int8-static", "prune-structured", "distill",
                                     "share-layers", "prune-structured+int8-dynamic"])
def test_variants_open_in_evaluate_and_predict(search, sentiment_csv, variant, capsys):
    _, results = search
    row = rows_by_name(results)[variant]
    assert main(["evaluate", row["path"], "--data", str(sentiment_csv), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["accuracy"] == pytest.approx(row["accuracy"]) and metrics["examples"] == 12
    assert main(["predict", row["path"], "the film was great", "--json"]) == 0
    prediction = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert prediction["label"] in ("neg", "pos") and sum(prediction["probabilities"].values()) == pytest.approx(1, abs=1e-3)


def test_method_names_in_help_match_the_registry():
    from danlu.compress.args import METHOD_NAMES
    from danlu.compress.search import ALL, METHODS

    assert sorted(METHOD_NAMES) == sorted(METHODS)
    assert all(part in METHODS for name in ALL for part in name.split("+"))


def test_objectives_pick_different_rows(tmp_path):
    from danlu.compress.args import CompressArgs
    from danlu.compress.search import _finish

    def row(name, accuracy, latency, throughput, size):
        return {"variant": name, "method": name, "status": "ok", "path": str(tmp_path / name), "quality": accuracy,
                "latency_ms": latency, "throughput": throughput, "size_mb": size}

    rows = [row("original", 0.90, 10, 100, 40), row("fast", 0.895, 2, 150, 30), row("wide", 0.893, 5, 400, 20),
            row("tiny", 0.80, 3, 120, 5)]
    for objective, chosen in [("latency", "fast"), ("throughput", "wide"), ("size", "wide")]:
        results = {"artifact": "a", "eval_data": "d", "objective": objective, "max_accuracy_drop": 1.0,
                   "test_examples": 10, "rows": [dict(r) for r in rows]}
        args = CompressArgs(artifact="a", out=str(tmp_path), objective=objective)
        assert _finish(results, args, tmp_path)["chosen"]["variant"] == chosen, objective
    assert [r["within_budget"] for r in results["rows"]] == [True, True, True, False]  # tiny drops 10 points


def test_no_variant_within_budget_keeps_the_original_and_exits_0(classifier, sentiment_csv, tmp_path, capsys, monkeypatch):
    from danlu.compress import methods as methods_module

    monkeypatch.setitem(methods_module.METHODS, "flip", (__name__, "flip_labels"))
    code = main(["compress", str(classifier), "--eval-data", str(sentiment_csv), "--out", str(tmp_path / "o"),
                 "--methods", "flip", "--repeats", "1", "--latency-samples", "1", "--throughput-batches", "1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "no variant is within --max-accuracy-drop 1.0 points; keeping the original" in printed
    assert "flip" in printed and "drop (pts)" in printed
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert results["chosen"]["variant"] == "original" and results["rows"][1]["within_budget"] is False


def test_reuse_variants_takes_a_finished_variant_made_with_the_same_options(classifier, sentiment_csv, tmp_path,
                                                                            capsys):
    out = tmp_path / "out"
    base = ["compress", str(classifier), "--eval-data", str(sentiment_csv), "--out", str(out), "--methods",
            "prune-magnitude", "--repeats", "1", "--latency-samples", "1", "--throughput-batches", "1"]
    assert main(base) == 0
    weights = out / "variants" / "prune-magnitude" / "model.safetensors"
    first = weights.stat().st_mtime_ns
    capsys.readouterr()
    assert main(base + ["--reuse-variants"]) == 0
    assert "prune-magnitude: reusing" in capsys.readouterr().err
    assert weights.stat().st_mtime_ns == first
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["status"] for r in rows] == ["ok", "ok"]
    # Other options: the variant is made again, not taken.
    assert main(base + ["--reuse-variants", "--sparsity", "0.3"]) == 0
    assert "reusing" not in capsys.readouterr().err
    assert weights.stat().st_mtime_ns != first
    manifest = json.loads((out / "variants" / "prune-magnitude" / "danlu.json").read_text())
    assert manifest["args"]["compress"]["sparsity"] == 0.3


def test_int8_engine_follows_the_cpu_flags(monkeypatch):
    """oneDNN int8 only where AMX/VNNI make it fast; on an AVX2-only CPU the x86 (FBGEMM) engine was ~1.7x
    faster at batch 1, so an int8-dynamic variant must not pick oneDNN there."""
    from danlu import hardware
    from danlu.compress.variant import select_quantized_engine

    monkeypatch.setattr(torch.backends.quantized, "engine", torch.backends.quantized.engine)
    for amx, vnni, expected in [(False, False, "x86"), (True, False, "onednn"), (False, True, "onednn")]:
        hardware.int8_engine.cache_clear()
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda v=vnni: v)
        select_quantized_engine()
        assert torch.backends.quantized.engine == expected
    hardware.int8_engine.cache_clear()


def test_bad_input_is_one_clear_line(classifier, sentiment_csv, tmp_path, capsys):
    from transformers import BertConfig, BertModel

    def error(argv):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.count("\n") == 1
        return err

    err = error(["compress", str(classifier), "--eval-data", str(sentiment_csv), "--out", str(tmp_path / "o"),
                 "--methods", "int9"])
    assert "unknown method 'int9'" in err and "int8-dynamic" in err and "distill" in err
    base = tmp_path / "base"
    BertModel(BertConfig(vocab_size=100, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                         intermediate_size=8)).save_pretrained(base)
    err = error(["compress", str(base), "--eval-data", str(sentiment_csv), "--out", str(tmp_path / "o")])
    assert "has no task head (architectures: BertModel)" in err
    other = tmp_path / "other.csv"
    other.write_text("text,label\n" + "".join(f"text {i},{'good' if i % 2 else 'bad'}\n" for i in range(40)))
    err = error(["compress", str(classifier), "--eval-data", str(other), "--out", str(tmp_path / "o")])
    assert "has labels bad, good but the artifact was trained on neg, pos" in err
    assert "--max-accuracy-drop must be >= 0" in error(["compress", str(classifier), "--out", "o",
                                                         "--max-accuracy-drop", "-1"])


def test_export_onnx_parity_and_int8(classifier, sentiment_csv, tmp_path, capsys):
    from danlu.export.onnx import parity_check

    out = tmp_path / "onnx"
    assert main(["export", str(classifier), "--format", "onnx", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "parity vs PyTorch on 12 examples: max |output diff|" in printed and "prediction agreement 1.0000" in printed
    manifest = json.loads((out / "danlu.json").read_text())
    assert manifest["metrics"]["parity"]["max_abs_output_diff"] < 1e-4
    assert manifest["onnx"]["fused_operators"]["Attention"] == 2  # eager export lets ORT fuse attention
    from danlu.tasks import classify

    examples = [("the film was great and wonderful", "pos"), ("dreadful", "neg"), ("the film was boring " * 20, "neg")]
    parity = parity_check(classifier, out, classify, examples, ["neg", "pos"], 128)
    assert parity["max_abs_output_diff"] < 1e-4 and parity["prediction_agreement"] == 1.0
    assert main(["export", str(classifier), "--out", str(tmp_path / "int8"), "--quantize", "int8",
                 "--optimize", "1"]) == 0
    quantized = json.loads((tmp_path / "int8" / "danlu.json").read_text())["metrics"]["parity"]
    assert quantized["prediction_agreement"] >= 0.9 and quantized["max_abs_output_diff"] < 0.1
    assert (tmp_path / "int8" / "model.onnx").stat().st_size < 0.4 * (out / "model.onnx").stat().st_size


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from danlu.assets import install

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(str(install("minilm-l6", quiet=True)))  # a small vocabulary
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_decoder_variants_store_quantized_weights_and_load_back(tiny_llama, tmp_path):
    from safetensors import safe_open

    from danlu.compress.decoder import load_decoder_variant, write_decoder_variant

    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102]])
    with torch.inference_mode():
        reference = load_decoder_variant(tiny_llama, "cpu")(input_ids=ids).logits
    for method, tolerance in [("bf16", 0.05), ("int8-weight-only", 0.02), ("int4-weight-only", 0.2)]:
        folder = write_decoder_variant(tiny_llama, tmp_path / method, method)
        with torch.inference_mode():
            logits = load_decoder_variant(folder, "cpu")(input_ids=ids).logits.float()
        assert (logits - reference).abs().max() < tolerance, method
        assert json.loads((folder / "danlu.json").read_text())["method"] == method
    with safe_open(str(tmp_path / "int8-weight-only" / "model.safetensors"), "pt") as f8, \
            safe_open(str(tmp_path / "int4-weight-only" / "model.safetensors"), "pt") as f4:
        name = "model.layers.0.mlp.up_proj"
        assert f8.get_tensor(name + ".qweight").dtype == torch.int8
        assert f8.get_tensor(name + ".qweight").shape == (128, 64)
        assert f4.get_tensor(name + ".qweight4").shape == (128, 32)  # two 4-bit values per byte


def test_decoder_search_measures_perplexity_and_speed(tiny_llama, tmp_path, capsys):
    text = tmp_path / "heldout.txt"
    text.write_text("The river runs through the old town and under the stone bridge. " * 30)
    assert main(["compress", str(tiny_llama), "--eval-data", str(text), "--out", str(tmp_path / "o"),
                 "--methods", "int8-weight-only", "distill", "--repeats", "1", "--max-accuracy-drop", "50"]) == 0
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    rows = rows_by_name(results)
    assert rows["original"]["perplexity"] > 1 and rows["int8-weight-only"]["tokens_per_second_b16"] > 0
    assert abs(rows["int8-weight-only"]["perplexity_change_pct"]) < 5
    assert rows["distill"]["status"] == "skipped"
    assert "| perplexity |" in (tmp_path / "o" / "report.md").read_text()


@pytest.mark.e2e
def test_real_minilm_exports_with_parity_and_int8_agrees(tmp_path, capsys):
    """The packaged MiniLM (with a fresh 2-label head) through export and int8-dynamic, on real reviews."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from danlu.artifact import write_manifest
    from danlu.assets import install
    from danlu.compress.job import CompressJob
    from danlu.compress.quantize import int8_dynamic
    from danlu.export.onnx import parity_check

    base = install("minilm-l6", quiet=True)
    clf = tmp_path / "clf"
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=2,
                                                               id2label={0: "fresh", 1: "rotten"},
                                                               label2id={"fresh": 0, "rotten": 1})
    model.save_pretrained(clf)
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(clf)
    write_manifest(clf, task="classify", stage="finetune", args={"max_length": 64}, labels=["fresh", "rotten"],
                   data={"source": "rotten-tomatoes"})
    assert main(["export", str(clf), "--out", str(tmp_path / "onnx"), "--parity-samples", "64"]) == 0
    parity = json.loads((tmp_path / "onnx" / "danlu.json").read_text())["metrics"]["parity"]
    assert parity["max_abs_output_diff"] < 1e-4 and parity["prediction_agreement"] == 1.0
    from danlu.tasks import classify
    from danlu.tasks.base import DataSpec

    data = classify.load_data(DataSpec("rotten-tomatoes"))
    variant = int8_dynamic(CompressJob(parent=clf, out=tmp_path / "int8", data=data, labels=["fresh", "rotten"],
                                       max_length=64))
    size = lambda p: (p / "model.safetensors").stat().st_size  # noqa: E731
    assert size(variant) < 0.3 * size(clf)  # int8 linears and int8 embeddings: ~26% of fp32
    texts = [text for text, _ in data.splits["test"][:64]]
    assert main(["predict", str(variant), *texts[:2], "--json"]) == 0
    from danlu.runtime import load as load_classifier
    from danlu.tasks.classify import encode, predict_proba

    fp32, int8 = load_classifier(str(clf), "cpu"), load_classifier(str(variant), "cpu")
    features = encode(fp32.tokenizer, texts, 64)
    reference = predict_proba(fp32.model, fp32.tokenizer, features)
    quantized = predict_proba(int8.model, int8.tokenizer, features)
    # The head is untrained (probabilities near 0.5), so compare probabilities, not labels.
    torch.testing.assert_close(quantized, reference, atol=0.03, rtol=0)
