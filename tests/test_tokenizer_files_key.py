"""Tokenized data (and the features cached from it) is keyed by the tokenizer files of a local model
folder: a tokenizer replaced in place must not reuse rows tokenized with the old one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import REPO, tiny_overrides

from bitune.data.demo import make_demo_frame
from bitune.data.prepare_splits import prepare_splits
from bitune.model.source import VOCAB_FILES, tokenizer_files_identity
from bitune.params import ModelParams, load_params


def test_a_tokenizer_replaced_in_place_gets_a_new_tokenization(tmp_path: Path, tiny_bert_dir: Path) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, model_dir)
    (tmp_path / "data").mkdir()
    make_demo_frame(40, 0).to_csv(tmp_path / "data" / "reviews.csv", index=False)
    params = load_params(REPO / "params" / "default.yaml", tiny_overrides(model_dir))
    first = prepare_splits(params, "md5-of-the-data", tmp_path)
    again = prepare_splits(params, "md5-of-the-data", tmp_path)
    assert again.folder == first.folder  # nothing changed: the same tokenization is reused

    vocab = model_dir / "vocab.txt"
    words = vocab.read_text().splitlines()
    vocab.write_text("\n".join([*words[:-1], "replacedtoken"]) + "\n")
    stat = vocab.stat()
    os.utime(vocab, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    after = prepare_splits(params, "md5-of-the-data", tmp_path)
    assert after.folder != first.folder


def test_a_hub_id_has_no_tokenizer_files_identity() -> None:
    assert tokenizer_files_identity(ModelParams(name_or_path="someone/not-a-local-folder")) is None


@pytest.mark.parametrize("name", VOCAB_FILES)
def test_every_vocabulary_file_a_tokenizer_reads_is_in_the_key(
    tmp_path: Path, tiny_bert_dir: Path, name: str
) -> None:
    """A sentencepiece model (spiece.model, tokenizer.model, ...) swapped in place retokenizes too."""
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, model_dir)
    model = ModelParams(name_or_path=str(model_dir))
    before = tokenizer_files_identity(model)
    (model_dir / name).write_bytes(b"a vocabulary")
    assert tokenizer_files_identity(model) != before
