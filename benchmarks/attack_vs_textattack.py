"""danlu attack vs TextAttack 0.3.x on the same examples, model and constraints, interleaved in one run.

Both attack the same fine-tuned MiniLM (an artifact folder) on the first N Rotten Tomatoes test examples
(danlu's split), with DeepWordBug and TextFooler built from the same components: greedy search over a
word-importance ranking (deletion for TextFooler, [UNK] for DeepWordBug), counter-fitted neighbours
(top 50, cosine >= 0.5) or DeepWordBug's four character edits, stop words kept (scikit-learn's list),
at most 20% of the words changed, each word once. TextFooler's sentence-encoder and part-of-speech
constraints need network downloads (TF-Hub, a tagger): left out on both sides. TextAttack runs in its own
venv (its pins clash with ours), fed the same counter-fitted vectors as a WordEmbedding (its own loader
downloads them). Prints success rate, queries per example, examples/s and the ratio; writes
benchmarks/results/attack_vs_textattack.json.

    python benchmarks/attack_vs_textattack.py --model /work/runs/rt-minilm --n 200 \
        --textattack-python /work/bench-venv-textattack/bin/python

TextAttack's venv (its resolver fails on a plain `pip install textattack` here: an sklearn sdist build):
    python3 -m venv /work/bench-venv-textattack && V=/work/bench-venv-textattack/bin/pip
    $V install torch==2.13.0 && $V install --no-deps textattack==0.3.10
    $V install "transformers<4.50" "datasets>=2.4,<3" nltk flair lru-dict lemminflect more-itertools \
        terminaltables word2number num2words pinyin jieba OpenHowNet editdistance bert-score \
        language_tool_python scipy pandas click
    # NLTK's stop words are read on import and not downloadable offline: any list will do (we pass ours)
    mkdir -p /work/bench-venv-textattack/nltk_data/corpora/stopwords && python -c "from sklearn.feature_extraction.text \
        import ENGLISH_STOP_WORDS as S; print('\\n'.join(sorted(S)))" > .../nltk_data/corpora/stopwords/english
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RECIPES = ("deepwordbug", "textfooler")


def peer(args) -> None:
    """Run inside TextAttack's venv: attack the examples in args.examples, print one JSON line."""
    import numpy as np
    import textattack
    import transformers
    from textattack.constraints.overlap import LevenshteinEditDistance, MaxWordsPerturbed
    from textattack.constraints.pre_transformation import RepeatModification, StopwordModification
    from textattack.constraints.semantics import WordEmbeddingDistance
    from textattack.goal_functions import UntargetedClassification
    from textattack.search_methods import GreedyWordSwapWIR
    from textattack.shared import WordEmbedding
    from textattack.transformations import (CompositeTransformation, WordSwapEmbedding,
                                            WordSwapNeighboringCharacterSwap, WordSwapRandomCharacterDeletion,
                                            WordSwapRandomCharacterInsertion, WordSwapRandomCharacterSubstitution)

    examples = json.loads(Path(args.examples).read_text())
    model = transformers.AutoModelForSequenceClassification.from_pretrained(args.model).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
    wrapper = textattack.models.wrappers.HuggingFaceModelWrapper(model, tokenizer)
    stops = set(examples["stop_words"])
    constraints = [RepeatModification(), StopwordModification(stopwords=stops), MaxWordsPerturbed(max_percent=0.2)]
    if args.recipe == "textfooler":
        cache = Path(examples["vectors_dir"])
        words = (cache / "words.txt").read_text(encoding="utf-8").split("\n")
        matrix = np.load(cache / "vectors.npy", allow_pickle=False)
        # neighbours precomputed by the driver for the words of these texts (TextAttack 0.3.10's on-the-fly
        # nearest_neighbours slices topk's tuple and fails); row = [the word, its 50 nearest by cosine]
        nn = np.load(examples["nn_matrix"], allow_pickle=False)
        embedding = WordEmbedding(matrix, {w: i for i, w in enumerate(words)}, dict(enumerate(words)), nn)
        transformation = WordSwapEmbedding(max_candidates=50, embedding=embedding)
        constraints.append(WordEmbeddingDistance(embedding=embedding, min_cos_sim=0.5))
        search = GreedyWordSwapWIR(wir_method="delete")
    else:
        transformation = CompositeTransformation([
            WordSwapNeighboringCharacterSwap(), WordSwapRandomCharacterSubstitution(),
            WordSwapRandomCharacterDeletion(), WordSwapRandomCharacterInsertion()])
        constraints.append(LevenshteinEditDistance(30))
        search = GreedyWordSwapWIR(wir_method="unk")
    attack = textattack.Attack(UntargetedClassification(wrapper), constraints, transformation, search)
    labels = examples["labels"]
    statuses, queries, changed = [], [], []
    start = time.perf_counter()
    for text, label in zip(examples["texts"], examples["label_names"]):
        result = attack.attack(text, labels.index(label))
        kind = type(result).__name__
        statuses.append({"SuccessfulAttackResult": "success", "FailedAttackResult": "failed"}.get(kind, "skipped"))
        if statuses[-1] != "skipped":
            queries.append(result.perturbed_result.num_queries)
        if statuses[-1] == "success":
            original = result.original_result.attacked_text
            changed.append(len(original.all_words_diff(result.perturbed_result.attacked_text)) / len(original.words))
    seconds = time.perf_counter() - start
    print(json.dumps(metrics(statuses, queries, changed, seconds, textattack_version=textattack.__name__)))


def metrics(statuses, queries, changed, seconds, **extra) -> dict:
    attacked = [s for s in statuses if s != "skipped"]
    success = [s for s in attacked if s == "success"]
    return {"examples": len(statuses), "attacked": len(attacked), "successful": len(success),
            "attack_success_rate": len(success) / max(1, len(attacked)),
            "queries_per_example": sum(queries) / max(1, len(queries)),
            "mean_fraction_words_changed": sum(changed) / max(1, len(changed)),
            "seconds": seconds, "examples_per_second": len(statuses) / seconds, **extra}


def run_danlu(loaded, texts, labels, recipe) -> dict:
    from danlu.robust.recipes import Constraints
    from danlu.robust.run import attack_texts, black_box, summarize

    predict = black_box(loaded.model, loaded.tokenizer, loaded.max_length, 64)
    start = time.perf_counter()
    results = attack_texts(predict, texts, labels, loaded.labels, recipe, Constraints(), loaded.tokenizer.unk_token)
    return summarize(results, time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="/work/runs/rt-minilm")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    parser.add_argument("--textattack-python", default="/work/bench-venv-textattack/bin/python")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "attack_vs_textattack.json"))
    parser.add_argument("--peer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--recipe", help=argparse.SUPPRESS)
    parser.add_argument("--examples", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        return peer(args)
    import tempfile

    import torch

    from danlu.explain.loading import load, split_examples
    from danlu.data.words import _cache_dir, counter_fitted, stop_words

    torch.set_num_threads(2)
    loaded = load(args.model, "cpu")
    texts, labels = split_examples(loaded, "rotten-tomatoes", "test", args.n)
    import numpy as np

    from danlu.robust.search import Words

    vectors = counter_fitted()  # writes the .npy cache the peer reads
    nn = np.zeros((len(vectors.words), 51), dtype=np.int64)
    for word, near in vectors.neighbours([w for t in texts for w in Words(t).words], 50, -1.0).items():
        nn[vectors.index[word], 0] = vectors.index[word]
        nn[vectors.index[word], 1:1 + len(near)] = [vectors.index[w] for w in near]
    nn_path = Path(tempfile.mkdtemp()) / "nn.npy"
    np.save(nn_path, nn, allow_pickle=False)
    shared = {"nn_matrix": str(nn_path), "texts": texts, "label_names": labels, "labels": loaded.labels, "stop_words": sorted(stop_words()),
              "vectors_dir": str(_cache_dir())}
    rows = {"load_average_before": os.getloadavg(), "n": args.n, "model": args.model, "runs": {}}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(shared, f)
    # TextAttack reads NLTK's stop-word list on import; the venv holds a copy (see the docstring)
    nltk_data = str(Path(args.textattack_python).parent.parent / "nltk_data")
    for k, recipe in enumerate(args.recipes):
        order = ["danlu", "textattack"] if k % 2 == 0 else ["textattack", "danlu"]  # interleaved
        for tool in order:
            if tool == "danlu":
                result = run_danlu(loaded, texts, labels, recipe)
            else:
                proc = subprocess.run([args.textattack_python, __file__, "--peer", "--recipe", recipe, "--model",
                                       str(loaded.path), "--examples", f.name],
                                      capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2", "NLTK_DATA": nltk_data})
                if proc.returncode != 0:
                    result = {"error": proc.stderr.strip()[-800:]}
                else:
                    result = json.loads(proc.stdout.strip().splitlines()[-1])
            rows["runs"].setdefault(recipe, {})[tool] = result
            print(recipe, tool, json.dumps(result), flush=True)
        both = rows["runs"][recipe]
        if "examples_per_second" in both.get("textattack", {}):
            both["speedup_examples_per_second"] = (both["danlu"]["examples_per_second"]
                                                   / both["textattack"]["examples_per_second"])
            both["success_rate_gap_points"] = 100 * (both["danlu"]["attack_success_rate"]
                                                     - both["textattack"]["attack_success_rate"])
    rows["load_average_after"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
