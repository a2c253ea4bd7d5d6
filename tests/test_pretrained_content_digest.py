"""The pipeline key's model part: same bytes, same digest (reinstalls skip); new bytes, new digest."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bitune.model.content_digest import pretrained_content_digest
from bitune.params import ModelParams


def copy_model(source: Path, target: Path) -> ModelParams:
    shutil.copytree(source, target)
    return ModelParams(name_or_path=str(target))


def test_a_copy_with_new_mtimes_keeps_the_digest(tiny_bert_dir: Path, tmp_path: Path) -> None:
    first = copy_model(tiny_bert_dir, tmp_path / "a")
    second = copy_model(tiny_bert_dir, tmp_path / "b")
    for path in (tmp_path / "b").iterdir():
        os.utime(path, ns=(1, 1))  # a rebuilt virtual environment: same bytes, other mtimes
    assert pretrained_content_digest(first) == pretrained_content_digest(second)


def test_weights_overwritten_in_place_with_the_same_size_change_the_digest(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    model = copy_model(tiny_bert_dir, tmp_path / "m")
    before = pretrained_content_digest(model)
    weights = next((tmp_path / "m").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one byte of one tensor: same size, same header
    stat = weights.stat()
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old mtime kept
    assert pretrained_content_digest(model) != before


def test_a_changed_tokenizer_file_changes_the_digest(tiny_bert_dir: Path, tmp_path: Path) -> None:
    model = copy_model(tiny_bert_dir, tmp_path / "m")
    before = pretrained_content_digest(model)
    vocab = tmp_path / "m" / "vocab.txt"
    vocab.write_text(vocab.read_text() + "newtoken\n")
    assert pretrained_content_digest(model) != before


def test_a_hub_id_is_keyed_by_name_and_revision_when_nothing_is_cached() -> None:
    main = pretrained_content_digest(ModelParams(name_or_path="nobody/not-cached-anywhere"))
    pinned = pretrained_content_digest(ModelParams(name_or_path="nobody/not-cached-anywhere", revision="v2"))
    assert main != pinned


def test_the_pipeline_key_changes_when_the_model_folder_is_overwritten(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    """The audit's case: a rerun after new weights were saved over the folder said "Nothing to do"."""
    from tiny_models import save_tiny_bert

    from bitune.params import load_params
    from bitune.pipeline import pipeline_key

    folder = tmp_path / "m"
    shutil.copytree(tiny_bert_dir, folder)
    params = load_params(
        Path(__file__).resolve().parents[1] / "params/default.yaml", [f"model.name_or_path={folder}"]
    )
    before = pipeline_key("0" * 32, params)
    assert pipeline_key("0" * 32, params) == before  # nothing changed, nothing to retrain
    save_tiny_bert(folder, num_layers=4, seed=7)  # other weights, same architecture, same folder
    assert pipeline_key("0" * 32, params) != before
