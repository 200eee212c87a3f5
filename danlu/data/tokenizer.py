"""Subword tokenizers for pretraining: trained with `tokenizers` (BPE, WordPiece, Unigram), or an
existing model's tokenizer. CJK characters are split one per pre-token in all three trained kinds, as
BERT's Chinese models do, so Chinese text never turns into a flood of unknown tokens: each character
is in the vocabulary, and characters never seen in training are spelled in bytes (byte-level BPE,
Unigram with byte fallback) or cost one [UNK] each (WordPiece, as in BERT), never a whole run of text."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from danlu.errors import DanluError

TRAINED_KINDS = ("bpe", "wordpiece", "unigram")
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# CJK ideographs, kana, hangul, and CJK/full-width punctuation.
CJK_PATTERN = (r"[\u2e80-\u2fff\u3000-\u303f\u3040-\u30ff\u3100-\u312f\u3400-\u4dbf\u4e00-\u9fff"
               r"\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")


def minimum_vocab_size(kind: str) -> int:
    """The smallest vocabulary a kind can have: its special tokens plus its base alphabet."""
    return len(SPECIAL_TOKENS) + (256 if kind in ("bpe", "unigram") else 26)


def _new_tokenizer(kind: str):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    isolate_cjk = pre_tokenizers.Split(Regex(CJK_PATTERN), behavior="isolated")
    if kind == "bpe":  # GPT-2 style byte-level BPE: never an unknown token
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [isolate_cjk, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
        tokenizer.decoder = decoders.ByteLevel()
    elif kind == "wordpiece":  # BERT's: its normaliser puts spaces around each CJK ideograph
        tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                          strip_accents=False, lowercase=False)
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([isolate_cjk, pre_tokenizers.BertPreTokenizer()])
        tokenizer.decoder = decoders.WordPiece()
    elif kind == "unigram":  # SentencePiece style
        tokenizer = Tokenizer(models.Unigram())
        # Metaspace first, marking only the text's start and real spaces, so CJK characters carry no "▁".
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Metaspace(prepend_scheme="first"), isolate_cjk])
        tokenizer.decoder = decoders.Metaspace(prepend_scheme="first")
    else:
        raise DanluError(f"--tokenizer: unknown kind {kind!r}; use {', '.join(TRAINED_KINDS)} or a model")
    return tokenizer


def train_tokenizer(kind: str, texts: Iterable[str], vocab_size: int, total: int | None = None):
    """Train a `kind` tokenizer on `texts`; return a `transformers` fast tokenizer with BERT's special tokens."""
    from tokenizers import pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < minimum_vocab_size(kind):
        raise DanluError(f"--vocab-size {vocab_size} is too small for a {kind} tokenizer: it needs at least "
                         f"{minimum_vocab_size(kind)} ({len(SPECIAL_TOKENS)} special tokens + the base alphabet)")
    tokenizer = _new_tokenizer(kind)
    common = {"vocab_size": vocab_size, "special_tokens": SPECIAL_TOKENS, "show_progress": False}
    if kind == "bpe":
        trainer = trainers.BpeTrainer(**common, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      max_token_length=24)
    elif kind == "wordpiece":
        trainer = trainers.WordPieceTrainer(**common, continuing_subword_prefix="##")
    else:  # 256 places are kept for the byte pieces added below
        trainer = trainers.UnigramTrainer(**{**common, "vocab_size": vocab_size - 256}, unk_token="[UNK]",
                                          max_piece_length=16)
    try:
        tokenizer.train_from_iterator(texts, trainer=trainer, length=total)
    except Exception as e:  # the Rust trainers raise plain Exceptions for impossible settings
        raise DanluError(f"could not train the {kind} tokenizer with --vocab-size {vocab_size}: {e}") from None
    if kind == "unigram":
        tokenizer = _with_byte_fallback(tokenizer)
    trained = tokenizer.get_vocab_size()
    if trained > vocab_size:
        # The trainers keep every character of the alphabet even past vocab_size.
        raise DanluError(f"--vocab-size {vocab_size} is too small: the corpus's alphabet alone needs "
                         f"{trained} tokens with the {kind} tokenizer; use at least {trained * 2}")
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                   bos_token="[CLS]", eos_token="[SEP]")


def _with_byte_fallback(tokenizer):
    """A trained Unigram tokenizer that spells characters it does not know as UTF-8 byte pieces
    (<0xE4><0xB8><0x80>) instead of [UNK], as SentencePiece's byte fallback (Llama's tokenizer) does."""
    import json

    from tokenizers import Tokenizer, decoders

    spec = json.loads(tokenizer.to_str())
    lowest = min(score for _, score in spec["model"]["vocab"][len(SPECIAL_TOKENS):] or [(None, 0.0)])
    spec["model"]["vocab"] += [[f"<0x{b:02X}>", lowest - 10.0] for b in range(256)]
    spec["model"]["byte_fallback"] = True
    rebuilt = Tokenizer.from_str(json.dumps(spec))
    rebuilt.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(prepend_scheme="first")])
    return rebuilt


def load_existing_tokenizer(name_or_path: str):
    """The fast tokenizer of a packaged model, a model folder or a tokenizer folder."""
    from transformers import AutoTokenizer

    path = Path(name_or_path).expanduser()
    if not (path.is_dir() and ((path / "tokenizer.json").exists() or (path / "tokenizer_config.json").exists())):
        from danlu.assets import resolve_model

        try:
            path = resolve_model(name_or_path)
        except DanluError as e:
            raise DanluError(f"--tokenizer: {e} (or one of {', '.join(TRAINED_KINDS)} to train one)") from None
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if not getattr(tokenizer, "is_fast", False):
        raise DanluError(f"--tokenizer {name_or_path}: only fast (Rust `tokenizers`) tokenizers are supported")
    if tokenizer.eos_token_id is None and tokenizer.sep_token_id is None:
        raise DanluError(f"--tokenizer {name_or_path}: it has neither an end-of-text nor a separator token")
    return tokenizer


def separator_id(tokenizer) -> int:
    """The token written between documents: [SEP] for BERT-style tokenizers, else end-of-text."""
    return tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id


def set_post_processor(tokenizer, style: str) -> None:
    """How `tokenizer(text)` frames inputs of the pretrained model: "bert" adds [CLS] ... [SEP] (and
    the pair form for NSP); "causal" adds nothing (prompts must not end in end-of-text)."""
    from tokenizers import processors

    backend = tokenizer.backend_tokenizer
    if style == "bert":
        cls, sep = tokenizer.cls_token, tokenizer.sep_token
        backend.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
            special_tokens=[(cls, tokenizer.cls_token_id), (sep, tokenizer.sep_token_id)])
    else:
        backend.post_processor = processors.Sequence([])
