"""The head phase's feature cache: keyed by the pretrained weights, written safely by many processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file
from tiny_models import save_tiny_bert

from bitune.errors import ParamsError
from bitune.model.pretrained import check_strategy_fits_model
from bitune.params import load_params
from bitune.tuning.features import feature_cache_file

PARAMS = Path(__file__).resolve().parents[1] / "params" / "default.yaml"
DATA_KEY = "0123456789abcdef"  # a prepared data key: data version, split, tokenizer, preprocess


def cache_name(model_dir: Path, *overrides: str) -> str:
    params = load_params(PARAMS, [f"model.name_or_path={model_dir}", *overrides])
    path = feature_cache_file(Path("/project"), params, DATA_KEY, "no")
    assert path is not None
    return path.name


def test_feature_cache_key_follows_the_pretrained_weights(tmp_path: Path) -> None:
    model_dir = save_tiny_bert(tmp_path / "model")
    before = cache_name(model_dir)
    assert cache_name(model_dir) == before  # stable
    assert cache_name(model_dir, "train.eval_batch_size=7") == before  # not about the weights
    assert cache_name(model_dir, "model.revision=v2") != before
    assert cache_name(model_dir, "model.pooling=cls") != before

    save_tiny_bert(model_dir, seed=1)  # the same folder, other weights (same size): the mtime moves
    weights = model_dir / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    after = cache_name(model_dir)
    assert after != before

    config = model_dir / "config.json"
    config.write_text(config.read_text() + "\n")  # any change to the config
    assert cache_name(model_dir) != after


def test_feature_cache_key_follows_the_data_and_precision(tmp_path: Path) -> None:
    params = load_params(PARAMS, [f"model.name_or_path={save_tiny_bert(tmp_path / 'model')}"])
    names = {
        feature_cache_file(tmp_path, params, key, precision)
        for key, precision in [(DATA_KEY, "no"), ("fedcba9876543210", "no"), (DATA_KEY, "bf16")]
    }
    assert len(names) == 3


def test_no_feature_cache_when_it_is_off(tmp_path: Path) -> None:
    params = load_params(PARAMS, ["train.feature_cache_dir=null"])
    assert feature_cache_file(tmp_path, params, DATA_KEY, "no") is None


WRITER = """
import sys
from pathlib import Path
import torch
from bitune.tuning.features import save_features
value = float(sys.argv[2])
feats = {"train": torch.full((200, 64), value), "validation": torch.full((50, 64), value)}
for _ in range(int(sys.argv[3])):
    save_features(feats, Path(sys.argv[1]))
"""


def test_concurrent_writers_leave_one_whole_file(tmp_path: Path) -> None:
    """As DDP ranks do: every process writes the same cache file at once, over and over.

    Fresh interpreters, not forks: a fork of the test process inherits its torch threads and locks.
    """
    target = tmp_path / "features" / "key.safetensors"
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(i), "40"], stderr=subprocess.PIPE)
        for i in range(4)
    ]
    errors = [w.communicate(timeout=120)[1].decode()[-500:] for w in writers]
    assert [w.returncode for w in writers] == [0, 0, 0, 0], errors
    loaded = load_file(str(target))
    assert loaded["train"].shape == (200, 64) and loaded["validation"].shape == (50, 64)
    value = loaded["train"][0, 0].item()
    assert value in (0.0, 1.0, 2.0, 3.0)
    assert bool((loaded["train"] == value).all() and (loaded["validation"] == value).all())
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temp file left behind


def test_strategy_is_checked_against_the_model_config(tmp_path: Path) -> None:
    """bidirectional's bottom phase trains layers[0:4]: on a 3-layer model that fails before training."""
    three = save_tiny_bert(tmp_path / "three", num_layers=3)
    with pytest.raises(ParamsError, match=r"^strategy.phases.1.train: 'layers\[0:4\]' .*3 layers"):
        check_strategy_fits_model(load_params(PARAMS, [f"model.name_or_path={three}"]))
    four = save_tiny_bert(tmp_path / "four", num_layers=4)
    check_strategy_fits_model(load_params(PARAMS, [f"model.name_or_path={four}"]))
