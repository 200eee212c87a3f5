import csv
import random
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer, width-32 random BERT with the packaged MiniLM tokenizer, saved as a model folder."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from danlu.assets import install

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(str(install("minilm-l6", quiet=True)))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def sentiment_csv(tmp_path_factory) -> Path:
    """120 easy two-class rows: the label is written in the words."""
    rng = random.Random(0)
    good, bad = ["great", "wonderful", "superb", "lovely"], ["awful", "terrible", "dreadful", "boring"]
    path = tmp_path_factory.mktemp("data") / "reviews.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(120):
            label = "pos" if i % 2 else "neg"
            words = good if label == "pos" else bad
            w.writerow([f"the film was {rng.choice(words)} and {rng.choice(words)} " * rng.randint(1, 3), label])
    return path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A 2-layer, width-32 random Llama with the packaged SmolLM2 tokenizer (and its chat template)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from danlu.assets import install

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(str(install("smollm2-135m", quiet=True)))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    """The committed English sample prepared for pretraining (BPE, 600 tokens, 32-token sequences)."""
    from danlu.data.prepare import PrepareArgs, prepare

    out = tmp_path_factory.mktemp("prep") / "en"
    prepare(PrepareArgs(corpus=[str(Path(__file__).parent / "assets" / "en_sample.txt")], out=str(out),
                        vocab_size=600, seq_len=32, val_ratio=0.2))
    return out


@pytest.fixture(scope="session")
def tracked_classifier(tiny_bert, sentiment_csv, tmp_path_factory) -> Path:
    """A tiny fine-tuned classifier whose run also went to TensorBoard and MLflow (default SQLite store)."""
    from danlu.cli import main

    out = tmp_path_factory.mktemp("tracked") / "clf"
    assert main(["finetune", "--model", str(tiny_bert), "--data", str(sentiment_csv), "--out", str(out),
                 "--epochs", "4", "--lr", "3e-3", "--batch-size", "16", "--eval-every", "6", "--log-every", "2",
                 "--report-to", "tensorboard", "mlflow"]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_ner(tiny_bert, tmp_path_factory) -> Path:
    """The tiny BERT as a token classifier (O, B-PER, I-PER, B-LOC, I-LOC) whose head is biased to say B-PER
    for every token: every word of a text is an entity (explain tests)."""
    import torch
    from transformers import AutoTokenizer, BertForTokenClassification

    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    folder = tmp_path_factory.mktemp("tiny-ner")
    torch.manual_seed(0)
    model = BertForTokenClassification.from_pretrained(
        str(tiny_bert), num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={k: i for i, k in enumerate(labels)}, ignore_mismatched_sizes=True)
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([0.0, 5.0, 0.0, 1.0, 0.0]))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(tiny_bert)).save_pretrained(folder)
    return folder
