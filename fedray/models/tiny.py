"""Tiny randomly initialised models with real tokenizers, saved like any pretrained checkpoint.

Tests load them through the same `from_pretrained` path that users' models take.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2Tokenizer,
    LlamaConfig,
    LlamaForCausalLM,
)

_CORPUS = [
    "to be or not to be that is the question",
    "whether tis nobler in the mind to suffer the slings and arrows of outrageous fortune",
    "all the world is a stage and all the men and women merely players",
    "now is the winter of our discontent made glorious summer by this sun of york",
    "the quick brown fox jumps over the lazy dog",
    "friends romans countrymen lend me your ears",
]
_EOS = "<|endoftext|>"
_SEED = 0  # the same weights on every call


def _bpe_tokenizer(vocab_size: int = 320) -> GPT2Tokenizer:
    """A byte-level BPE tokenizer trained on a few sentences (every byte is in its vocabulary)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[_EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer)
    merges = [tuple(m) for m in json.loads(tok.to_str())["model"]["merges"]]
    return GPT2Tokenizer(vocab=tok.get_vocab(), merges=merges, eos_token=_EOS, bos_token=_EOS)


def _wordpiece_tokenizer() -> BertTokenizer:
    """A BERT WordPiece tokenizer: special tokens, characters, `##` characters, common words."""
    chars = string.ascii_lowercase + string.digits
    words = sorted({w for line in _CORPUS for w in line.split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += list(chars + string.punctuation) + [f"##{c}" for c in chars] + words
    return BertTokenizer(vocab={w: i for i, w in enumerate(dict.fromkeys(vocab))})


def save_tiny_causal_lm(path: str | Path) -> str:
    """Save a 2-layer GPT-2 (hidden 32) and its BPE tokenizer under `path`; return the path."""
    path = Path(path)
    tokenizer = _bpe_tokenizer()
    eos = tokenizer.convert_tokens_to_ids(_EOS)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=128,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        model = GPT2LMHeadModel(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def save_tiny_classifier(path: str | Path) -> str:
    """Save a 2-layer BERT encoder (hidden 32, no head) and a WordPiece tokenizer under `path`.

    Like MiniLM, the checkpoint has no classifier, so any `num_labels` gets a fresh head.
    """
    path = Path(path)
    tokenizer = _wordpiece_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        model = BertModel(config, add_pooling_layer=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


# LLaMA-style sizes by name: (hidden, intermediate, layers, heads, vocab). "1b" is TinyLlama's
# widths and depth with full multi-head attention (1.26B parameters; TinyLlama's grouped-query
# attention makes it 1.10B); "300m" is 1.29 GB in float32; "tiny" costs nothing to load.
LLAMA_SIZES: dict[str, tuple[int, int, int, int, int]] = {
    "tiny": (64, 176, 2, 4, 1024),
    "300m": (1024, 2816, 20, 16, 32000),
    "1b": (2048, 5632, 22, 32, 32000),
}


def save_llama(
    path: str | Path, size: str = "tiny", *, device: str = "cpu", dtype: str = "float32"
) -> str:
    """Save a randomly initialised LLaMA-style causal LM of `size` (:data:`LLAMA_SIZES`) and a
    BPE tokenizer under `path` (safetensors, loadable by path); return the path.

    The weights are random (seeded), not pretrained: these models measure memory and speed.
    The tokenizer covers few tokens of the 32,000-entry vocabulary, as the embedding's size is
    what matters here. `device` only speeds up the initialisation (a GPU initialises 1B
    parameters in seconds); the files are the same.
    """
    if size not in LLAMA_SIZES:
        raise ValueError(f"size={size!r}: choose one of {sorted(LLAMA_SIZES)}")
    hidden, intermediate, layers, heads, vocab = LLAMA_SIZES[size]
    path = Path(path)
    tokenizer = _bpe_tokenizer()
    eos = tokenizer.convert_tokens_to_ids(_EOS)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(_SEED)
        model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
