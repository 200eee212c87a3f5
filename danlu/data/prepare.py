"""`danlu prepare`: raw text -> cleaned, deduplicated documents -> a tokenizer -> token shards.

The prepared folder holds everything pretraining needs and nothing it must recompute:
`tokenizer/`, the train/validation token shards (see danlu/data/shards.py), `meta.json` (how to read
them), `stats.json` (what happened to the corpus) and `danlu.json`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np

from danlu.config import arg, check
from danlu.errors import DanluError

FORMAT = "danlu-token-shards-1"


@dataclass
class PrepareArgs:
    """Clean, deduplicate and tokenize a corpus into token shards for `danlu pretrain`."""

    corpus: list[str] = arg(help="packaged corpus name (wiki-sample), or .txt/.jsonl/.parquet/.xml files "
                                 "(also .bz2/.gz) or folders of them", positional=True, nargs="+")
    out: str = arg(help="folder for the prepared corpus (written atomically)")
    tokenizer: str = arg("bpe", "train a tokenizer (bpe, wordpiece or unigram) or use an existing model's "
                                "(a packaged model name such as smollm2-135m, or a model/tokenizer folder)")
    vocab_size: int = arg(8000, "vocabulary size of a trained tokenizer, special tokens included")
    min_length: int = arg(50, "drop documents shorter than this many characters after cleaning")
    dedup: Literal["near", "exact", "none"] = arg("near", "duplicate removal: exact (same normalised text), "
                                                          "near (also MinHash LSH near-duplicates), or none")
    near_threshold: float = arg(0.8, "estimated Jaccard similarity of word 5-grams above which documents are "
                                     "near-duplicates")
    val_ratio: float = arg(0.05, "share of the documents held out for validation (split by document)")
    seed: int = arg(42, "seed of the train/validation split")
    seq_len: int = arg(128, "the sequence length you will pretrain with: a corpus smaller than one sequence "
                            "is refused")
    text_field: str = arg("text", "field (JSONL) or column (Parquet) holding the text")
    shard_tokens: int = arg(100_000_000, "start a new shard file after this many tokens")
    overwrite: bool = arg(False, "replace OUT if it holds a danlu artifact (never a folder danlu did not make)")

    def __post_init__(self) -> None:
        check(bool(self.corpus), "CORPUS", "give at least one corpus")
        check(self.vocab_size >= 1, "--vocab-size", f"must be >= 1, got {self.vocab_size}")
        check(self.min_length >= 0, "--min-length", f"must be >= 0, got {self.min_length}")
        check(0 < self.near_threshold < 1, "--near-threshold", f"must be in (0, 1), got {self.near_threshold}")
        check(0 <= self.val_ratio < 0.5, "--val-ratio", f"must be in [0, 0.5), got {self.val_ratio}")
        check(self.seq_len >= 8, "--seq-len", f"must be >= 8, got {self.seq_len}")
        check(self.shard_tokens >= 1, "--shard-tokens", f"must be >= 1, got {self.shard_tokens}")


def _read_clean_dedup(args: PrepareArgs, files: list[Path], docs_path: Path) -> dict:
    """Pass 1: every raw document -> cleaned, filtered, deduplicated lines of docs_path (JSONL)."""
    from tqdm.auto import tqdm

    from danlu.data.clean import clean_document
    from danlu.data.corpus import iter_documents
    from danlu.data.dedup import Deduplicator

    dedup = Deduplicator(args.dedup, threshold=args.near_threshold, seed=args.seed)
    counts = {"documents_in": 0, "too_short": 0, "characters_out": 0, "documents_out": 0}
    with open(docs_path, "w", encoding="utf-8") as out, tqdm(desc="reading", unit="doc", dynamic_ncols=True,
                                                             mininterval=1.0) as bar:
        for path in files:
            for raw in iter_documents(path, args.text_field):
                counts["documents_in"] += 1
                bar.update(1)
                text = clean_document(raw, args.min_length)
                if text is None:
                    counts["too_short"] += 1
                elif not dedup.is_duplicate(text):
                    out.write(json.dumps(text, ensure_ascii=False) + "\n")
                    counts["documents_out"] += 1
                    counts["characters_out"] += len(text)
    counts["duplicates_exact"], counts["duplicates_near"] = dedup.exact, dedup.near
    return counts


def _iter_docs(docs_path: Path, keep=None) -> Iterator[str]:
    with open(docs_path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if keep is None or keep(i):
                yield json.loads(line)


def _validation_set(n: int, ratio: float, seed: int) -> set[int]:
    if n < 2 or ratio == 0:
        return set()
    count = min(n - 1, max(1, round(ratio * n)))
    return set(np.random.default_rng(seed).choice(n, size=count, replace=False).tolist())


def _encode_and_write(tokenizer, docs_path: Path, n_docs: int, validation: set[int], folder: Path,
                      dtype, separator: int, shard_tokens: int) -> dict[str, list[dict]]:
    """Pass 2: tokenize each document sentence by sentence and append it to its split's shards."""
    from tqdm.auto import tqdm

    from danlu.data.clean import split_sentences
    from danlu.data.shards import ShardWriter

    writers = {split: ShardWriter(folder, split, dtype, separator, shard_tokens)
               for split in ("train", "validation")}
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_padding()  # some saved tokenizers pad or truncate every encoding (e.g. to 128)
    backend.no_truncation()
    batch: list[tuple[int, list[str]]] = []

    def flush() -> None:
        flat = [s for _, sentences in batch for s in sentences]
        encoded = iter(backend.encode_batch(flat, add_special_tokens=False))
        for index, sentences in batch:
            ids = [next(encoded).ids for _ in sentences]
            writers["validation" if index in validation else "train"].add([x for x in ids if x])
        batch.clear()

    for index, text in enumerate(tqdm(_iter_docs(docs_path), total=n_docs, desc="tokenizing", unit="doc",
                                      dynamic_ncols=True, mininterval=1.0)):
        batch.append((index, split_sentences(text)))
        if len(batch) == 256:
            flush()
    flush()
    return {split: writer.close() for split, writer in writers.items()}


def _token_counts(folder: Path, shards: list[dict], dtype, vocab_size: int) -> np.ndarray:
    counts = np.zeros(vocab_size, dtype=np.int64)
    for shard in shards:
        if shard["num_tokens"]:
            tokens = np.memmap(folder / shard["tokens"], dtype=dtype, mode="r")
            counts += np.bincount(tokens, minlength=vocab_size)[:vocab_size]
    return counts


def unigram_baselines(train: np.ndarray, validation: np.ndarray, special_ids: list[int]) -> dict:
    """Losses (nats/token) of predictors that ignore context, on the validation tokens (specials excluded):
    the entropy of the validation tokens' own frequencies (the best any context-free guess can do) and
    the cross-entropy under add-one smoothed training frequencies (what such a model would learn)."""
    train, validation = train.astype(np.float64).copy(), validation.astype(np.float64).copy()
    train[special_ids] = 0
    validation[special_ids] = 0
    total = validation.sum()
    if not total:
        return {}
    p_val = validation[validation > 0] / total
    p_train = (train + 1) / (train.sum() + len(train))
    return {"unigram_entropy": float(-(p_val * np.log(p_val)).sum()),
            "unigram_cross_entropy": float(-(validation * np.log(p_train)).sum() / total)}


def prepare(args: PrepareArgs) -> Path:
    """Prepare `args.corpus` into `args.out`; print and return a summary of what was kept."""
    from danlu.artifact import atomic_dir, fingerprint_files, write_manifest
    from danlu.config import to_dict
    from danlu.data.corpus import resolve_corpus
    from danlu.data.shards import token_dtype
    from danlu.data.tokenizer import TRAINED_KINDS, load_existing_tokenizer, separator_id, train_tokenizer

    started = time.perf_counter()
    files = [f for source in args.corpus for f in resolve_corpus(source)]
    existing = None if args.tokenizer in TRAINED_KINDS else load_existing_tokenizer(args.tokenizer)
    out = Path(args.out)
    with atomic_dir(out, args.overwrite) as tmp:
        docs_path = tmp / "documents.jsonl"
        counts = _read_clean_dedup(args, files, docs_path)
        if counts["documents_in"] == 0:
            raise DanluError(f"the corpus is empty: no documents in {', '.join(map(str, files))}")
        if counts["documents_out"] == 0:
            raise DanluError(f"no documents left after cleaning: {counts['documents_in']} read, "
                             f"{counts['too_short']} shorter than --min-length {args.min_length}, "
                             f"{counts['duplicates_exact'] + counts['duplicates_near']} duplicates")
        n_docs = counts["documents_out"]
        validation = _validation_set(n_docs, args.val_ratio, args.seed)
        if existing is None:
            print(f"training a {args.tokenizer} tokenizer (vocabulary {args.vocab_size}) on "
                  f"{n_docs - len(validation)} documents ...", flush=True)
            tokenizer = train_tokenizer(args.tokenizer, _iter_docs(docs_path, lambda i: i not in validation),
                                        args.vocab_size, total=n_docs - len(validation))
        else:
            tokenizer = existing
        vocab_size = len(tokenizer)
        dtype = token_dtype(vocab_size)
        separator = separator_id(tokenizer)
        shards = _encode_and_write(tokenizer, docs_path, n_docs, validation, tmp, dtype, separator,
                                   args.shard_tokens)
        docs_path.unlink()
        train_counts = _token_counts(tmp, shards["train"], dtype, vocab_size)
        val_counts = _token_counts(tmp, shards["validation"], dtype, vocab_size)
        train_tokens = int(train_counts.sum())
        if train_tokens < args.seq_len + 1:
            raise DanluError(f"the corpus is smaller than one sequence: {train_tokens} training tokens after "
                             f"cleaning, fewer than --seq-len {args.seq_len} + 1; add text or lower --seq-len")
        special_ids = sorted(set(tokenizer.all_special_ids))
        unk = tokenizer.unk_token_id
        stats = {
            **{k: counts[k] for k in ("documents_in", "too_short", "duplicates_exact", "duplicates_near",
                                      "documents_out")},
            "documents": {"train": n_docs - len(validation), "validation": len(validation)},
            "tokens": {"train": train_tokens, "validation": int(val_counts.sum())},
            "sentences": {split: sum(int(np.load(tmp / s["sentences"]).size) for s in shards[split])
                          for split in shards},
            "characters_per_token": round(counts["characters_out"] / max(1, train_tokens + val_counts.sum()), 3),
            "vocab_size": vocab_size,
            "vocab_coverage": round(float((train_counts > 0).sum() / vocab_size), 4),
            "unk_rate": {"train": float(train_counts[unk] / max(1, train_tokens)) if unk is not None else 0.0,
                         "validation": float(val_counts[unk] / max(1, val_counts.sum())) if unk is not None
                         else 0.0},
            **unigram_baselines(train_counts, val_counts, special_ids),
            "seconds": round(time.perf_counter() - started, 2),
        }
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        meta = {"format": FORMAT, "dtype": dtype.name, "vocab_size": vocab_size, "separator_id": separator,
                "special_ids": {name: getattr(tokenizer, f"{name}_token_id") for name in
                                ("pad", "unk", "cls", "sep", "mask", "bos", "eos")},
                "tokenizer": {"kind": args.tokenizer if existing is None else "existing",
                              "source": args.tokenizer, "trained": existing is None},
                "splits": shards}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
        write_manifest(tmp, task="corpus", stage="prepare", args=to_dict(args),
                       data_fingerprint=fingerprint_files(files), metrics=stats,
                       sources=[str(f) for f in files])
    print_summary(out, stats)
    return out


def print_summary(out: Path, stats: dict) -> None:
    removed = stats["duplicates_exact"] + stats["duplicates_near"]
    print(f"documents: {stats['documents_in']} in, {stats['too_short']} too short, {removed} duplicates "
          f"({stats['duplicates_exact']} exact, {stats['duplicates_near']} near), {stats['documents_out']} out "
          f"({stats['documents']['train']} train / {stats['documents']['validation']} validation)")
    print(f"tokens: {stats['tokens']['train']:,} train / {stats['tokens']['validation']:,} validation, "
          f"{stats['characters_per_token']} characters per token")
    print(f"vocabulary: {stats['vocab_size']} tokens, {stats['vocab_coverage']:.1%} used in training text, "
          f"unknown-token rate {stats['unk_rate']['validation']:.4%} (validation)")
    if "unigram_entropy" in stats:
        print(f"unigram baseline on validation: entropy {stats['unigram_entropy']:.3f} nats/token "
              f"(perplexity {math.exp(stats['unigram_entropy']):.1f})")
    print(f"wrote {out}")
