"""The model's files are checked before torch is imported: what lets `bitune run` name a bad
`model.name_or_path` in about two seconds instead of after ~10 s of imports and a Prefect flow run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bitune.errors import ModelError
from bitune.model.files_check import check_model_files
from bitune.model.source import TOKENIZER_FILES, VOCAB_FILES, resolve_model_source
from bitune.params import ModelParams


def test_checking_a_model_folder_imports_neither_torch_nor_transformers(tiny_bert_dir: Path) -> None:
    code = (
        "import sys\n"
        "from bitune.model.files_check import check_model_files\n"
        "from bitune.params import ModelParams\n"
        f"check_model_files(ModelParams(name_or_path={str(tiny_bert_dir)!r}))\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]", proc.stdout


def test_a_folder_without_a_tokenizer_vocabulary_is_refused(tiny_bert_dir: Path, tmp_path: Path) -> None:
    """transformers 5 loads such a folder's tokenizer as special tokens alone: every word [UNK]."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, folder)
    check_model_files(ModelParams(name_or_path=str(folder)))  # whole: passes
    for name in VOCAB_FILES:
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(
        ModelError, match=r"^model.name_or_path: .*/model has no tokenizer vocabulary .*save_pretrained"
    ):
        check_model_files(ModelParams(name_or_path=str(folder)))


@pytest.mark.parametrize("name", ["vocab.txt", "tokenizer.json"])
def test_one_vocabulary_file_is_enough(tiny_bert_dir: Path, tmp_path: Path, name: str) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, folder)
    for other in set(VOCAB_FILES) - {name}:
        (folder / other).unlink(missing_ok=True)
    assert (folder / name).is_file()
    check_model_files(ModelParams(name_or_path=str(folder)))


def test_a_truncated_weights_file_is_refused_from_its_header(tiny_bert_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelError, match="model.safetensors is not a readable safetensors file"):
        check_model_files(ModelParams(name_or_path=str(folder)))


def test_a_tokenizer_with_more_tokens_than_the_model_embeds_is_refused(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    """Another model's tokenizer copied into the folder: every load passes, then the embedding lookup
    fails mid-run with "index out of range"."""
    from tasks.preprocess import check_model

    folder = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, folder)
    check_model(ModelParams(name_or_path=str(folder)))  # its own tokenizer: passes
    other = Path(resolve_model_source("bundled:all-MiniLM-L6-v2"))
    for name in TOKENIZER_FILES:
        (folder / name).unlink(missing_ok=True)
        if (other / name).is_file():
            shutil.copyfile(other / name, folder / name)
    with pytest.raises(ModelError, match=r"tokenizer has 30522 tokens but the model embeds only \d+ "):
        check_model(ModelParams(name_or_path=str(folder)))
