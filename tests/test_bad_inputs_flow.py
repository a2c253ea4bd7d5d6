"""Bad inputs on the flow's own path, which a scheduled deployment takes without the CLI's checks:
an unwritable checkpoint folder, a parent run that fails while it opens, a hub id offline.

Found in the bad-input audit: the CLI checked the folders params write into before starting the
flow, but the flow did not, so a scheduled run versioned new data first; a parent run whose params
file could not be logged stayed RUNNING forever; and a hub id missing from the cache with
HF_HUB_OFFLINE=1 said "couldn't connect to huggingface.co", with no word of the setting.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import REPO, make_project, tiny_overrides
from project_state import data_state

from bitune.data.demo import make_demo_frame
from bitune.data.prepared import PreparedData
from bitune.errors import ModelError, ParamsError, TrackingError
from bitune.params import DataParams, ModelParams, load_params
from tasks import dvc_store
from tasks.data import DataVersion, version_data_fn
from tasks.preprocess import check_model
from tasks.tracking import TrackingSettings

# --- the flow checks the folders it writes, before the data step ----------------------------------


@pytest.fixture
def versioned(tmp_path: Path) -> Path:
    """A project with one data version (the demo) in the cache and the remote; no run yet."""
    root = make_project(tmp_path / "project", Path())
    version_data_fn(DataParams(demo_rows=60), root)
    assert dvc_store.data_version(root)
    return root


def test_the_flow_refuses_an_unwritable_checkpoint_folder_before_versioning_data(
    versioned: Path, tiny_bert_dir: Path, tmp_path: Path, prefect_db: None
) -> None:
    from flows.retrain import retrain

    new_data = tmp_path / "new.csv"
    make_demo_frame(60, 5).to_csv(new_data, index=False)  # would be a new data version
    (versioned / "outputs").write_text("a file where the checkpoint folder's parent must be")
    before = data_state(versioned)
    overrides = [
        *tiny_overrides(tiny_bert_dir),
        f"data.source={new_data}",
        "train.checkpoint_dir=outputs/checkpoints",
    ]
    with pytest.raises(ParamsError) as raised:
        retrain(params_file="params/default.yaml", overrides=overrides, project_dir=str(versioned))
    message = str(raised.value)
    assert message == (
        f"train.checkpoint_dir: {versioned / 'outputs'} is a file, not a folder; point "
        "train.checkpoint_dir at a folder"
    )
    assert "\n" not in message
    assert data_state(versioned) == before  # data.dvc, data/, cache and remote as they were
    assert not (versioned / "mlflow.db").exists()  # checked before the store is opened, too


# --- a parent run that fails while it opens is closed FAILED --------------------------------------


def test_a_parent_run_that_cannot_log_its_params_file_is_closed_failed(tmp_path: Path) -> None:
    """The experiment was created when tracking.artifact_location was `old-artifacts`; that folder has
    since been replaced by a file. An experiment keeps the artifact folder it was created with, so
    the run is created, and fails at its first artifact."""
    from mlflow.tracking import MlflowClient

    from tasks.runs import open_parent_run_fn

    root = tmp_path
    params = load_params(REPO / "params" / "default.yaml")
    settings = TrackingSettings.from_params(params.tracking, root)
    client = MlflowClient(tracking_uri=settings.uri)
    experiment = client.create_experiment(settings.experiment, (root / "old-artifacts").as_uri())
    (root / "old-artifacts").write_text("a file where the experiment's artifact folder was")
    data = DataVersion(md5="0123456789abcdef0123456789abcdef.dir", path="data", remote="r", changed=True)
    prepared = PreparedData(folder=str(root / "prepared"), labels=["neg", "pos"], sizes={"train": 8}, key="k")

    with pytest.raises(TrackingError) as raised:
        open_parent_run_fn(settings, params, data, prepared, "key-1", root, root / "params.resolved.json")
    message = str(raised.value)
    assert message.startswith(f"tracking: cannot write the run's artifacts to {root / 'old-artifacts'}/")
    assert message.endswith(
        "experiment 'bitune' keeps them where it was created: make that folder writable, or set "
        "tracking.experiment to a new experiment name"
    )
    assert "\n" not in message
    runs = client.search_runs([experiment])
    assert [r.info.status for r in runs] == ["FAILED"]  # not RUNNING until a later run closes it KILLED
    assert runs[0].info.end_time is not None


# --- a hub id offline -------------------------------------------------------------------------------


def test_an_uncached_hub_id_offline_names_the_setting_and_the_fixes() -> None:
    import huggingface_hub.constants

    assert huggingface_hub.constants.HF_HUB_OFFLINE  # conftest sets HF_HUB_OFFLINE=1 before imports
    with pytest.raises(ModelError) as raised:
        check_model(ModelParams(name_or_path="bitune-tests/no-such-model", revision="v2"))
    assert str(raised.value) == (
        "model.name_or_path: 'bitune-tests/no-such-model' at revision v2 is not in the local Hugging Face "
        "cache and offline mode is on (HF_HUB_OFFLINE is set); unset HF_HUB_OFFLINE to download it, or "
        "point model.name_or_path at a local model folder"
    )


def test_a_broken_local_folder_offline_is_not_blamed_on_offline_mode(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, folder)
    (folder / "config.json").write_text("{ not json")
    with pytest.raises(ModelError) as raised:
        check_model(ModelParams(name_or_path=str(folder)))
    assert str(raised.value).startswith(f"model.name_or_path: cannot load '{folder}' (")
    assert "offline" not in str(raised.value)


# --- a scheduled run's output: the error's lines without its traceback ----------------------------


def test_a_user_error_in_a_flow_run_reaches_the_console_without_its_traceback(
    tmp_path: Path, tiny_bert_dir: Path, shared_prefect: dict[str, str]
) -> None:
    """`bitune schedule` shows its runs' output as is: a TrackingError, already one line naming the
    setting and the fix, came with two tracebacks (about 80 lines) per failed run. The flow runs in
    a process of its own, as a runner starts it, with Prefect's own logging and a Prefect server to
    report to (a runner's flow runs have one: here the session's)."""
    import os
    import subprocess
    import sys

    from loopback_server import free_port

    root = make_project(tmp_path / "project", tiny_bert_dir)
    overrides = [*tiny_overrides(tiny_bert_dir), f"tracking.uri=http://127.0.0.1:{free_port()}"]
    script = (
        "from flows.retrain import retrain\n"
        "try:\n"
        f"    retrain('params/default.yaml', {overrides!r}, {str(root)!r})\n"
        "except Exception as exc:\n"
        "    print('raised', type(exc).__name__)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env |= shared_prefect
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    shown = proc.stdout + proc.stderr
    assert "raised TrackingError" in proc.stdout, shown[-3000:]
    assert "tracking.uri: cannot reach MLflow at http://127.0.0.1:" in shown, shown[-3000:]
    assert "Traceback" not in shown, shown[-3000:]
