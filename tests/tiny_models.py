"""Tiny random encoders for tests: real Hugging Face classes, a few thousand weights, built offline.

Every architecture bitune claims to support is built here from its own config class, so layer-group
and training tests run against the real module trees instead of hand-written stand-ins.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    BertConfig,
    BertModel,
    BertTokenizerFast,
    PretrainedConfig,
    PreTrainedModel,
)

MODEL_TYPES = ("bert", "roberta", "distilbert", "deberta-v2", "electra", "modernbert")

HIDDEN = 32
HEADS = 2
INTERMEDIATE = 37
VOCAB = 120
MAX_POSITION = 64

# Special ids shared by every tiny config and the tiny tokenizer, so ids a test feeds in stay valid.
PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# Letters and suffix pieces let any lowercase word tokenize to something other than [UNK].
_WORDS = """
the a an of to in on at by for with from and or but not no is are was were be been has have had
do does did it its this that these those he she they we you i his her their our my who which what
when where there here one two three first new old good great small large long time year day people
world city river music film book story game team school water house country history language
science made used known called became later after before during between about over under into
than more most many some all only also very well very can will would could should may new
""".split()
_PIECES = ["##s", "##ed", "##ing", "##ly", "##er", "##es", "##al", "##ion"]
_LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]
_PUNCT = list(".,;:!?'\"-()")
_DIGITS = [str(d) for d in range(10)]


def _vocab() -> list[str]:
    tokens = SPECIAL_TOKENS + _PUNCT + _DIGITS + _LETTERS + [f"##{c}" for c in _LETTERS] + _PIECES
    return list(dict.fromkeys(tokens + _WORDS))  # keeps order, drops repeats


def tiny_config(model_type: str, num_layers: int = 2, **overrides: Any) -> PretrainedConfig:
    """A config of `model_type` with hidden 32, 2 heads, intermediate 37, vocab 120, 64 positions."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"tiny_config: unknown model_type {model_type!r}; choose one of {MODEL_TYPES}")
    common: dict[str, Any] = {
        "vocab_size": VOCAB,
        "max_position_embeddings": MAX_POSITION,
        "pad_token_id": PAD,
    }
    if model_type == "distilbert":
        kwargs = {
            **common,
            "dim": HIDDEN,
            "n_layers": num_layers,
            "n_heads": HEADS,
            "hidden_dim": INTERMEDIATE,
        }
    else:
        kwargs = {
            **common,
            "hidden_size": HIDDEN,
            "num_hidden_layers": num_layers,
            "num_attention_heads": HEADS,
            "intermediate_size": INTERMEDIATE,
        }
    if model_type == "roberta":
        kwargs.update(bos_token_id=CLS, eos_token_id=SEP)
    if model_type == "electra":
        kwargs["embedding_size"] = HIDDEN // 2  # makes ELECTRA build its embeddings_project
    if model_type == "deberta-v2":
        # DeBERTa-v3 layout: relative attention, so the encoder owns rel_embeddings and a LayerNorm.
        kwargs.update(
            relative_attention=True,
            position_biased_input=False,
            pos_att_type=["p2c", "c2p"],
            norm_rel_ebd="layer_norm",
            position_buckets=16,
            max_relative_positions=-1,
        )
    if model_type == "modernbert":
        kwargs.update(bos_token_id=CLS, eos_token_id=SEP, cls_token_id=CLS, sep_token_id=SEP)
    kwargs.update(overrides)
    return AutoConfig.for_model(model_type, **kwargs)


def tiny_backbone(model_type: str, num_layers: int = 2, seed: int = 0) -> PreTrainedModel:
    """A randomly initialised backbone; the same seed gives the same weights, global RNG untouched."""
    config = tiny_config(model_type, num_layers)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModel.from_config(config)


def save_tiny_bert(dir: Path, num_layers: int = 2, seed: int = 0) -> Path:
    """Write a tiny BertModel (safetensors) and its WordPiece tokenizer to `dir`; returns `dir`.

    `AutoModel.from_pretrained(dir)` and `AutoTokenizer.from_pretrained(dir)` then work offline, and
    ordinary lowercase English tokenizes to words and word pieces, not [UNK].
    """
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    vocab = _vocab()
    vocab_file = dir / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    config = tiny_config("bert", num_layers, vocab_size=len(vocab))
    assert isinstance(config, BertConfig)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config)
    model.save_pretrained(dir, safe_serialization=True)
    tokenizer = BertTokenizerFast(vocab=str(vocab_file), model_max_length=MAX_POSITION)
    tokenizer.save_pretrained(dir)
    return dir
