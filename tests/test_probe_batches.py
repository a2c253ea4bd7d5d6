"""The forgetting probe as batches: every text once, in order, cut at the length the model trains on."""

from __future__ import annotations

from pathlib import Path

import torch
from tiny_models import save_tiny_bert
from transformers import AutoTokenizer

from bitune.forgetting import load_probe_texts, probe_batches


def test_probe_batches_cover_every_text_in_order_within_max_length(tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(save_tiny_bert(tmp_path / "bert"))
    texts = load_probe_texts(None, 10)
    batches = probe_batches(tokenizer, texts, max_length=12, batch_size=4)
    assert [len(b["input_ids"]) for b in batches] == [4, 4, 2]
    assert all(set(b) == {"input_ids", "attention_mask"} for b in batches)
    # every probe line is longer than 12 tokens: all cut at max_length, in the texts' order
    expected = tokenizer(texts, truncation=True, max_length=12, padding="max_length", return_tensors="pt")
    assert torch.equal(torch.cat([b["input_ids"] for b in batches]), expected["input_ids"])
