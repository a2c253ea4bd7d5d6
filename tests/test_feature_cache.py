"""The head phase's feature cache: keyed by the pretrained weights, written safely by many processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import constants as hf_constants
from safetensors.torch import load_file
from tiny_models import save_tiny_bert

from bitune.data.preprocess import tokenization_key
from bitune.errors import ParamsError
from bitune.model.pretrained import check_strategy_fits_model
from bitune.params import load_params
from bitune.tuning.features import feature_cache_file

PARAMS = Path(__file__).resolve().parents[1] / "params" / "default.yaml"
DATA_KEY = "0123456789abcdef"  # a prepared data key: data version, split, tokenizer, preprocess


def cache_name(model_dir: Path | str, *overrides: str) -> str:
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


def test_feature_cache_key_follows_the_hub_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub id without a revision follows main: new weights pushed under the same name (main now
    another commit in the local Hugging Face cache) must not reuse the old weights' features."""
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--someone--tiny-encoder"

    def download(commit: str) -> None:
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "config.json").write_text("{}")
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(commit)

    uncached = cache_name("someone/tiny-encoder")
    download("a" * 40)
    first = cache_name("someone/tiny-encoder")
    assert cache_name("someone/tiny-encoder") == first  # stable
    download("b" * 40)
    second = cache_name("someone/tiny-encoder")
    assert len({uncached, first, second}) == 3
    assert cache_name("someone/tiny-encoder", f"model.revision={'a' * 40}") != second


@pytest.mark.parametrize("override", ["preprocess.max_length=32", "preprocess.lowercase=true"])
def test_feature_cache_key_follows_the_tokenizer_settings(tmp_path: Path, override: str) -> None:
    """The data key the tuning task passes (`PreparedData.key`) hashes the preprocess settings, so
    features of texts cut at another length or lowercased never share a file."""
    model = f"model.name_or_path={save_tiny_bert(tmp_path / 'model')}"
    names = set()
    for params in (load_params(PARAMS, [model]), load_params(PARAMS, [model, override])):
        data_key = tokenization_key("rows-v1", params.model.name_or_path, params.preprocess)
        names.add(feature_cache_file(tmp_path, params, data_key, "no"))
    assert len(names) == 2


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
