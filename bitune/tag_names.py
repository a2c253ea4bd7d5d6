"""The names of bitune's MLflow tags, in one place.

MLflow search filters (tags.`bitune.pipeline_key` = '...'), the UI's columns and the registry's
readers (`bitune compare`, `promote`, `rollback`, `history`) find a run or a version by these exact
strings; a typo in one is no error, only a filter that silently matches nothing. So every module names
them through this one: the core owns them, and this module imports nothing (no MLflow, Prefect or
DVC). The values are what existing tracking stores hold: never change one.
"""

from __future__ import annotations

from typing import Final

PREFIX: Final[str] = "bitune."  # every name below starts with it: a phase run copied whole keeps these

# run tags: the flow's parent run (MLflow search finds a pipeline's runs and skips a rerun through them)
PIPELINE: Final[str] = "bitune.pipeline"  # on every run bitune opens: what `bitune compare` lists
PIPELINE_KEY: Final[str] = "bitune.pipeline_key"  # data version + params: a rerun of the same is a no-op
STRATEGY: Final[str] = "bitune.strategy"  # also a model-version tag
DATA_VERSION: Final[str] = "bitune.data_version"  # the DVC md5 trained on; also a model-version tag
CLOSED_STALE_RUNS: Final[str] = "bitune.closed_stale_runs"  # runs left RUNNING, marked KILLED on start
MODEL_VERSION: Final[str] = "bitune.model_version"  # the version the run registered
GATE: Final[str] = "bitune.gate"  # the registration gate's decision; also a model-version tag

# phase and evaluation run tags: the parent run's nested runs
PHASE: Final[str] = "bitune.phase"
ROUND: Final[str] = "bitune.round"
FEATURE_CACHE: Final[str] = "bitune.feature_cache"
RESUMED_FROM_EPOCH: Final[str] = "bitune.resumed_from_epoch"
RESUMED_FROM_RUN: Final[str] = "bitune.resumed_from_run"
REUSED_FROM_RUN: Final[str] = "bitune.reused_from_run"

# model-version tags: what the registry's gate, `promote` and `rollback` read back
TEST_SPLIT: Final[str] = "bitune.test_split"  # `bitune.data.seen.split_digest` of its test rows
PARAMS_DIGEST: Final[str] = "bitune.params_digest"
SOURCE: Final[str] = "bitune.source"  # the logged model's `models:/<model_id>`
GATE_TEST_ROWS: Final[str] = "bitune.gate_test_rows"
GATE_EXCLUDED_ROWS: Final[str] = "bitune.gate_excluded_rows"
MANUAL_GATE: Final[str] = "bitune.manual_gate"
PREVIOUS_CHAMPION: Final[str] = "bitune.previous_champion"  # what `rollback` walks back to
PROMOTION: Final[str] = "bitune.promotion"
ROLLED_BACK: Final[str] = "bitune.rolled_back"
RESTORED: Final[str] = "bitune.restored"

# registered-model tags: one per move of the `champion` alias, this prefix and a 4-digit number
CHAMPION_MOVE_PREFIX: Final[str] = "bitune.champion.move."
