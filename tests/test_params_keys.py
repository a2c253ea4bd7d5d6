"""Keys derived from params: each phase's key is unique, and the digest hashes only what shapes the model."""

from __future__ import annotations

from pathlib import Path

import pytest

from bitune.errors import ParamsError
from bitune.params import load_params
from bitune.tuning.schedule import expand_strategy

PARAMS = Path(__file__).resolve().parents[1] / "params" / "default.yaml"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["strategy.phases.1.name=head"],
            "strategy: strategy.phases.1.name: phase key 'head' is also strategy.phases.0.name's",
        ),
        (  # the prelude runs under its bare name, as round 1 of the repeated phases does
            ["strategy=lp_ft", "strategy.prelude.0.name=full"],
            "strategy.phases.0.name: phase key 'full' is also strategy.prelude.0.name's",
        ),
        (  # round 2 of 'bottom' is 'bottom-r2'
            ["strategy.rounds=2", "strategy.phases.0.name=bottom-r2"],
            "strategy.phases.1.name: phase key 'bottom-r2' is also strategy.phases.0.name's",
        ),
    ],
)
def test_phases_with_the_same_key_are_a_params_error(overrides: list[str], message: str) -> None:
    with pytest.raises(ParamsError, match="give each phase a unique name$") as raised:
        load_params(PARAMS, overrides)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_every_preset_has_unique_keys_over_rounds() -> None:
    for preset in ("bidirectional", "full", "gradual_unfreeze", "head_only", "lp_ft"):
        strategy = load_params(PARAMS, [f"strategy={preset}", "strategy.rounds=3"]).strategy
        keys = [run.key for run in expand_strategy(strategy)]
        assert len(keys) == len(set(keys)), preset


@pytest.mark.parametrize(
    "override",
    [
        "train.eval_batch_size=7",
        "train.torch_threads=3",
        "train.checkpoint_dir=elsewhere/ckpt",
        "train.feature_cache_dir=null",
        "train.timeout_minutes=30",  # a run it stopped resumes under a longer limit
        "data.source=reviews.csv",
        "data.demo_rows=900",
        "data.remote=s3://bucket/prefix",
        "tracking.experiment=other",
        "registry.min_delta=0.5",
        "data.max_length_chars=30000",  # checks that pass or stop the run, never change a row
        "data.max_duplicate_fraction=0.5",
    ],
)
def test_digest_ignores_what_does_not_change_the_model(override: str) -> None:
    assert load_params(PARAMS, [override]).digest() == load_params(PARAMS).digest()


@pytest.mark.parametrize(
    "override",
    [
        "train.processes=2",  # DDP: each optimizer step sees the batches of every process
        "train.seed=1",
        "train.precision=bf16",
        "strategy.phases.1.lr=0.001",
        "preprocess.lowercase=true",
        "model.revision=v2",
        "data.labels=[negative, positive]",
        "data.split.seed=3",
        "data.label_conflicts=drop",  # drops rows before the split
        "forgetting.probe_rows=64",  # the CKA stored with each phase's result
    ],
)
def test_digest_follows_what_changes_the_model(override: str) -> None:
    assert load_params(PARAMS, [override]).digest() != load_params(PARAMS).digest()


def test_the_documented_multi_node_launch_args_load_as_command_line_text() -> None:
    """README's and docs/production.md's example: YAML reads 2, 0 and 29500 as numbers."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (override,) = re.findall(r'--set "(train\.launch_args=\[[^"]+\])"', readme)
    params = load_params(Path(__file__).resolve().parents[1] / "params/default.yaml", [override])
    assert params.train.launch_args[:4] == ["--num_machines", "2", "--machine_rank", "0"]
    assert params.train.launch_args[-1] == "29500"


def test_a_validation_only_setting_enters_the_digest_at_its_default() -> None:
    """So keys made before it was left out still match: an upgrade retrains no unchanged project."""
    import hashlib
    import json

    params = load_params(PARAMS)
    payload = params.model_dump(mode="json")
    for name in ("tracking", "registry"):
        payload.pop(name)
    for name in ("source", "demo_rows", "remote"):
        payload["data"].pop(name)
    for name in (
        "eval_batch_size",
        "torch_threads",
        "checkpoint_dir",
        "feature_cache_dir",
        "timeout_minutes",
        "bf16_norms",  # keyed only when set away from its default
    ):
        payload["train"].pop(name)
    assert params.digest() == hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
