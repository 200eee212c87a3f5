"""finetune --augment: EDA and typo augmentation, A2T-style adversarial objective, recorded in the artifact."""

import json
import random

import torch

from danlu.cli import main
from danlu.tasks.augment import AdversarialObjective, augment_objective, eda, typos


def test_eda_and_typos_are_seeded_and_change_the_text():
    from danlu.data.words import keyboard_neighbours, wordnet

    text = "a gripping and beautifully acted film about a terrible war"
    synonyms, stops = wordnet().synonyms, frozenset({"a", "and", "about"})
    outs = {eda(text, random.Random(s), synonyms, stops) for s in range(8)}
    assert len(outs) > 1 and eda(text, random.Random(3), synonyms, stops) == eda(text, random.Random(3), synonyms, stops)
    typo = typos(text, random.Random(0), keyboard_neighbours())
    assert typo != text and len(typo.split()) == len(text.split())
    changed = [(a, b) for a, b in zip(text.split(), typo.split()) if a != b]
    assert all(len(a) == len(b) for a, b in changed)


def test_adversarial_objective_swaps_words_for_counter_fitted_neighbours(tiny_bert):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from danlu.tasks.classify import make_objective

    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert))
    examples = [("a terrible , boring film", "neg"), ("a wonderful , moving film", "pos")]
    plain, _ = make_objective(tok, examples, ["neg", "pos"], 32)
    objective = augment_objective("adversarial", "classify", plain, examples, ["neg", "pos"], tok, 32)
    assert isinstance(objective, AdversarialObjective)
    batch = objective.collate([0, 1])
    loss = objective.loss_sum(model, batch)
    assert torch.isfinite(loss) and loss.requires_grad
    loss.backward()
    embeds = model.get_input_embeddings()(batch["input_ids"])
    grad = torch.randn_like(embeds)
    adv = objective.adversarial_ids(model.get_input_embeddings(), batch["input_ids"], grad)
    swapped = (adv != batch["input_ids"]).nonzero().tolist()
    assert swapped
    for row, pos in swapped:
        old, new = int(batch["input_ids"][row, pos]), int(adv[row, pos])
        assert new in objective.candidates[old].tolist()


def test_finetune_with_augment_records_it(tiny_bert, sentiment_csv, tmp_path):
    out = tmp_path / "model"
    assert main(["finetune", "--model", str(tiny_bert), "--data", str(sentiment_csv), "--out", str(out),
                 "--augment", "typo", "--max-steps", "2", "--batch-size", "8"]) == 0
    assert json.loads((out / "danlu.json").read_text())["args"]["augment"] == "typo"
