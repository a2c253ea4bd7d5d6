"""data.remote: a mistyped URL is refused when params load, and an s3:// remote without AWS credentials
is warned about in the preflight, before the data step's push would fail.

DVC reads anything without `scheme://host` as a local path: `s3:/dvc/bitune` used to become the folder
`./s3:/dvc/bitune` and every push landed on this disk.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, make_project

from bitune.data.remote import DVC_SCHEMES, missing_aws_credentials
from bitune.errors import ParamsError
from bitune.params import load_params
from tasks.runs import preflight_fn
from tasks.tracking import TrackingSettings

PARAMS = REPO / "params" / "default.yaml"


@pytest.mark.parametrize(
    ("remote", "fix"),
    [
        ("s3:/dvc/bitune", "write s3://dvc/bitune, or ./s3:/dvc/bitune if you mean a local folder"),
        ("S3:/dvc/bitune", "write s3://dvc/bitune"),
        ("S3://dvc/bitune", "write s3://dvc/bitune"),
        ("gs:bucket/x", "write gs://bucket/x"),
        ("s3://", "names no bucket; write s3://bucket/prefix"),
        ("s3:///prefix", "names no bucket"),
        ("ssh:///srv/dvc", "names no host"),
        ("ftp://host/x", "DVC has no remote type ftp://"),
        ("file:///srv/dvc", "without file://, e.g. /srv/dvc"),
    ],
)
def test_a_mistyped_remote_is_refused_naming_the_key_the_value_and_the_fix(remote: str, fix: str) -> None:
    with pytest.raises(ParamsError) as caught:
        load_params(PARAMS, [f"data.remote={remote}"])
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("--set data.remote: ") and repr(remote) in message and fix in message


def test_a_mistyped_remote_in_the_params_file_names_the_file(tmp_path: Path) -> None:
    params = tmp_path / "params"
    params.mkdir()
    text = PARAMS.read_text().replace("remote: .dvc-storage", "remote: s3:/dvc/bitune")
    assert "s3:/dvc/bitune" in text
    (params / "default.yaml").write_text(text)
    (params / "strategies").symlink_to(PARAMS.parent / "strategies")
    with pytest.raises(ParamsError, match=r"data\.remote.*'s3:/dvc/bitune'.*write s3://dvc/bitune"):
        load_params(params / "default.yaml")


@pytest.mark.parametrize(
    "remote",
    [".dvc-storage", "../shared/dvc", "/srv/dvc store", "s3://bucket", "s3://bucket/prefix", "gs://b/p",
     "azure://container/p", "ssh://user@host:2222/srv/dvc", "https://example.com/dvc", "webdavs://h/p",
     "./s3:/dvc/bitune"],
)  # fmt: skip
def test_local_folders_and_urls_dvc_supports_are_accepted(remote: str) -> None:
    assert load_params(PARAMS, [f"data.remote={remote}"]).data.remote == remote


def test_the_schemes_are_dvcs_own() -> None:
    from dvc.config_schema import REMOTE_SCHEMAS

    assert set(DVC_SCHEMES) == set(REMOTE_SCHEMAS) - {"", "remote"}


def test_bitune_run_with_a_mistyped_remote_changes_nothing(tmp_path: Path) -> None:
    """The real CLI: one error line, exit 2, and no `./s3:` folder, DVC repo or data version."""
    project = make_project(tmp_path / "project", Path())
    before = sorted(p.name for p in project.iterdir())
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "bitune"),
            "run",
            "--project",
            str(project),
            "--set",
            "data.remote=s3:/dvc/b",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: --set data.remote: 's3:/dvc/b' looks like a mistyped URL"), (
        proc.stderr
    )
    assert sorted(p.name for p in project.iterdir() if p.name != ".bitune") == before  # no s3:, .dvc, data


def test_no_aws_credentials_for_an_s3_remote_is_a_warning(tmp_path: Path) -> None:
    warning = missing_aws_credentials("s3://bucket/dvc", {}, tmp_path)
    assert warning is not None and "data.remote s3://bucket/dvc: no AWS credentials visible" in warning
    assert "\n" not in warning
    assert missing_aws_credentials(".dvc-storage", {}, tmp_path) is None  # local: nothing to say
    assert missing_aws_credentials("gs://bucket/dvc", {}, tmp_path) is None


@pytest.mark.parametrize(
    ("env", "files"),
    [
        ({"AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "x"}, {}),
        ({"AWS_PROFILE": "team"}, {}),
        ({}, {".aws/credentials": "[default]\naws_access_key_id = AKIA\naws_secret_access_key = x\n"}),
        ({}, {".aws/config": "[profile sso]\nsso_session = corp\n"}),
        ({"AWS_SHARED_CREDENTIALS_FILE": "{home}/elsewhere"}, {"elsewhere": "[x]\naws_access_key_id = A\n"}),
    ],
    ids=["env-keys", "env-profile", "credentials-file", "sso-config", "credentials-file-env"],
)
def test_visible_aws_credentials_silence_the_warning(
    tmp_path: Path, env: dict[str, str], files: dict[str, str]
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    env = {key: value.replace("{home}", str(tmp_path)) for key, value in env.items()}
    assert missing_aws_credentials("s3://bucket/dvc", env, tmp_path) is None


def test_a_config_file_with_only_a_region_is_no_credentials(tmp_path: Path) -> None:
    (tmp_path / ".aws").mkdir()
    (tmp_path / ".aws" / "config").write_text("[default]\nregion = eu-west-1\n")
    assert missing_aws_credentials("s3://bucket/dvc", {}, tmp_path) is not None


@pytest.mark.slow
def test_the_preflight_warns_before_the_data_step(  # type: ignore[no-untyped-def]
    tmp_path: Path, tiny_bert_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    """The real preflight on a project with an s3:// remote, in a process with no AWS credentials."""
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    project = make_project(tmp_path / "project", Path())
    params = load_params(
        project / "params" / "default.yaml",
        [f"model.name_or_path={tiny_bert_dir}", "data.remote=s3://bucket/dvc"],
    )
    settings = TrackingSettings(f"sqlite:///{project / 'mlflow.db'}", "bitune", None)
    with caplog.at_level(logging.WARNING, logger="bitune"):
        preflight_fn(settings, params, project)
    warned = [r.getMessage() for r in caplog.records if "no AWS credentials visible" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("data: data.remote s3://bucket/dvc: no AWS credentials")
    assert not (project / "data.dvc").exists() and not (project / ".dvc").exists()  # before the data step
