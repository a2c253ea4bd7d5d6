"""A catalogue of bad inputs through the real CLI: one line naming the problem and the fix, nothing changed.

The module trains once (so there is a champion and a data version to protect), then runs every bad
input as `bitune run` against its own copy of that project. Each case asserts: a non-zero exit;
stderr holds the error line and the "(details in ...)" line and nothing else but Prefect's INFO lines;
no traceback anywhere; and the copy's data.dvc, data/, DVC remote, model registry and top-level files
are exactly as they were.

Most cases fail in the CLI's own checks, before any flow or server starts: those run in processes
forked from one that imported the CLI once (tests/forked_cli.py), and must print no Prefect line at
all. The cases only the flow can catch run as real `bitune run` processes against the session's
Prefect server (conftest's `shared_prefect`), several at a time. The same runs show that Prefect's
results stay in the project: the good run is told to persist results and writes none, a failed flow
run's record lands in the project's .bitune/prefect-results/, and nothing reaches the Prefect home's
storage/.

Bad model files fail in the CLI's checks, before Prefect starts; a tokenizer that cannot load or a
strategy that reaches past the model's layers fail in the flow's preflight, before the data step runs
at all (tests/test_preflight.py also passes new data with them, and checks servers that are down).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
from conftest import make_project, tiny_overrides

from bitune.data.demo import make_demo_frame

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
WORKERS = 3
PREFECT_INFO = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} \| (INFO|DEBUG) ")
BASE = make_demo_frame(60, 5)  # valid on its own: 30 rows per class, no repeats


def csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode("utf-8")


def renamed(**columns: str) -> bytes:
    return csv(BASE.rename(columns=columns))


def with_rows(rows: dict[int, tuple[object, object]], frame: pd.DataFrame = BASE) -> bytes:
    changed = frame.copy()
    for i, (text, label) in rows.items():
        changed.loc[i, ["text", "label"]] = [text, label]
    return csv(changed)


def split_folder(folder: Path) -> None:
    folder.mkdir()
    (folder / "train.csv").write_bytes(csv(BASE))
    (folder / "test.csv").write_bytes(csv(BASE.iloc[:10]))  # ten texts that are also in train


def folder_with_notes(folder: Path) -> None:
    folder.mkdir()
    (folder / "notes.txt").write_text("not data")


def truncated_model(folder: Path) -> None:
    """A tiny model whose weights file was cut short (an interrupted copy or download)."""
    from tiny_models import save_tiny_bert

    weights = save_tiny_bert(folder) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def model_without_tokenizer(folder: Path) -> None:
    """A tiny model folder with config and weights whose tokenizer files were left out of a copy."""
    from tiny_models import save_tiny_bert

    from bitune.model.source import TOKENIZER_FILES

    save_tiny_bert(folder)
    for name in TOKENIZER_FILES:
        (folder / name).unlink(missing_ok=True)


def model_with_another_models_tokenizer(folder: Path) -> None:
    """A tiny model folder into which all-MiniLM-L6-v2's tokenizer (30,522 tokens) was copied."""
    from tiny_models import save_tiny_bert

    from bitune.model.source import TOKENIZER_FILES, resolve_model_source

    save_tiny_bert(folder)
    other = Path(resolve_model_source("bundled:all-MiniLM-L6-v2"))
    for name in TOKENIZER_FILES:
        (folder / name).unlink(missing_ok=True)
        if (other / name).is_file():
            shutil.copyfile(other / name, folder / name)


NEW_DATA = csv(make_demo_frame(60, 8))  # valid and new: a run that got to the data step would version it


@dataclass(frozen=True)
class Case:
    id: str
    args: list[str]  # after `bitune run --project P <tiny overrides>`; {in} is the inputs folder
    expect: tuple[str, ...]  # in the error line: what is wrong, where, and the fix
    files: dict[str, bytes | Callable[[Path], None]] = field(default_factory=dict)
    in_flow: bool = False  # caught inside the retrain flow, not by the CLI's checks before it starts


CASES = [
    # params: rejected before any work starts
    Case(
        "unknown-key",
        ["--set", "train.sed=1"],
        ("--set train.sed: unknown key", "did you mean train.seed?", "params/default.yaml"),
    ),
    Case(
        "unknown-strategy-key",
        ["--set", "strategy.round=2"],
        (
            "--set strategy.round: unknown key",
            "did you mean strategy.rounds?",
            "strategies/bidirectional.yaml",
        ),
    ),
    Case("wrong-type", ["--set", "train.seed=abc"], ("--set train.seed: expected an integer, got 'abc'",)),
    Case("out-of-range", ["--set", "data.split.validation=0.9"], ("data.split.validation", "less than 0.5")),
    Case(
        "unknown-strategy",
        ["--set", "strategy=nonsense"],
        ("--set strategy: unknown preset 'nonsense'", "bidirectional"),
    ),
    Case(
        "unknown-layer-group",
        ["--set", "strategy.phases.0.train=[headz]"],
        ("strategy.phases.0.train", "'headz'", "layers[i:j]"),
    ),
    Case(
        "invalid-yaml",
        ["--params", "{in}/broken.yaml"],
        ("broken.yaml line", "not valid YAML", "fix the syntax"),
        {"broken.yaml": b"strategy: bidirectional\ndata: {source: [unclosed\n"},
    ),
    Case(
        "params-not-a-mapping",
        ["--params", "{in}/list.yaml"],
        ("list.yaml", "expected a mapping"),
        {"list.yaml": b"- data\n- model\n"},
    ),
    Case("missing-params-file", ["--params", "{in}/nope.yaml"], ("nope.yaml", "not found", "--params")),
    Case("bad-set-syntax", ["--set", "train.seed"], ("'train.seed'", "expected key=value")),
    # data files: rejected by the data step, before data/, data.dvc or the remote are touched
    Case("missing-file", ["--data", "{in}/nope.csv"], ("nope.csv", "file not found")),
    Case("unreadable-file", ["--data", "/proc/self/mem"], ("/proc/self/mem: cannot read it", "readable")),
    Case(
        "empty-file",
        ["--data", "{in}/empty.csv"],
        ("empty.csv", "empty file", "header row"),
        {"empty.csv": b""},
    ),
    Case(
        "header-only",
        ["--data", "{in}/header.csv"],
        ("no data rows", "add rows"),
        {"header.csv": b"text,label\n"},
    ),
    Case(
        "missing-text-column",
        ["--data", "{in}/notext.csv"],
        ("notext.csv", "no column 'text'", "set data.text_column"),
        {"notext.csv": renamed(text="review")},
    ),
    Case(
        "missing-label-column",
        ["--data", "{in}/nolabel.csv"],
        ("nolabel.csv", "no column 'label'", "set data.label_column"),
        {"nolabel.csv": renamed(label="stars")},
    ),
    Case(
        "not-utf8",
        ["--data", "{in}/latin1.csv"],
        ("latin1.csv", "not UTF-8", "line 3", "iconv"),
        {"latin1.csv": with_rows({1: ("caf\u00e9 was grand", "positive")}).decode().encode("latin-1")},
    ),
    Case(
        "blank-texts",
        ["--data", "{in}/blank.csv"],
        ("missing or blank text at rows 4, 9", "fill in or remove"),
        {"blank.csv": with_rows({2: ("", "positive"), 7: ("   ", "negative")})},
    ),
    Case(
        "single-class",
        ["--data", "{in}/one.csv"],
        ("only one class ('positive')", "data.label_column"),
        {"one.csv": csv(BASE.assign(label="positive"))},
    ),
    Case(
        "unsupported-extension",
        ["--data", "{in}/reviews.xlsx"],
        ("reviews.xlsx", "unsupported extension", ".csv"),
        {"reviews.xlsx": b"PK\x03\x04 not really a workbook"},
    ),
    Case(
        "conflicting-labels",
        ["--data", "{in}/conflict.csv"],
        ("more than one label", "row 2", "fix the labels"),
        {
            "conflict.csv": with_rows(
                {1: (BASE.loc[0, "text"], "negative" if BASE.loc[0, "label"] == "positive" else "positive")}
            )
        },
    ),
    Case(
        "test-train-leakage",
        ["--data", "{in}/splits"],
        ("10 test texts also in train (leakage)", "train row 2", "remove them"),
        {"splits": split_folder},
    ),
    Case(
        "too-few-rows-per-class",
        ["--data", "{in}/small.csv"],
        ("too few rows per class", "needs at least 14", "data.split"),
        {
            "small.csv": csv(
                pd.concat([BASE[BASE.label == "positive"].head(20), BASE[BASE.label == "negative"].head(5)])
            )
        },
    ),
    Case(
        "unparseable-csv",
        ["--data", "{in}/quotes.csv"],
        ("quotes.csv", "cannot parse as CSV", "quoting"),
        {"quotes.csv": b"text,label\nfine,positive\ntoo,many,fields,here\n"},
    ),
    Case(
        "bad-jsonl-line",
        ["--data", "{in}/lines.jsonl"],
        ("lines.jsonl line 2", "not valid JSON"),
        {"lines.jsonl": b'{"text": "ok", "label": "positive"}\n{"text": "cut off", "label\n'},
    ),
    Case(
        "label-outside-data-labels",
        ["--data", "{in}/neutral.csv", "--set", "data.labels=[positive,negative]"],
        ("labels not in data.labels", "'neutral' (row 5)", "add the labels"),
        {"neutral.csv": with_rows({3: ("it was a film, I suppose", "neutral")})},
    ),
    Case(
        "folder-without-data",
        ["--data", "{in}/docs"],
        ("docs/", "no data file", "notes.txt"),
        {"docs": folder_with_notes},
    ),
    # model: its files fail in the CLI's checks, before Prefect starts and before the data step
    Case(
        "model-folder-without-config",
        ["--set", "model.name_or_path={in}/empty-model"],
        ("model.name_or_path", "empty-model is not a model folder (no config.json)", "save_pretrained"),
        {"empty-model": Path.mkdir},
    ),
    Case(  # passed the preflight, which checked only that a weights file exists; data.dvc changed
        "model-weights-truncated",
        ["--data", "{in}/new.csv", "--set", "model.name_or_path={in}/cut-model"],
        ("model.name_or_path", "cut-model/model.safetensors is not a readable safetensors file", "truncated"),
        {"new.csv": NEW_DATA, "cut-model": truncated_model},
    ),
    Case(  # transformers 5 loads a tokenizer of special tokens alone: it trained on [UNK]s, exit 0
        "tokenizer-missing",
        ["--data", "{in}/new.csv", "--set", "model.name_or_path={in}/no-tokenizer"],
        ("model.name_or_path", "no-tokenizer has no tokenizer vocabulary", "tokenizer.save_pretrained"),
        {"new.csv": NEW_DATA, "no-tokenizer": model_without_tokenizer},
    ),
    # what needs the model's config and tokenizer loaded: the flow's preflight, still before the data step
    Case(  # passed every load, then "index out of range" mid-run, after the data step: exit 1, "a bug"
        "tokenizer-of-another-model",
        ["--data", "{in}/new.csv", "--set", "model.name_or_path={in}/mixed-model"],
        ("model.name_or_path", "tokenizer has 30522 tokens but the model embeds only", "save_pretrained"),
        {"new.csv": NEW_DATA, "mixed-model": model_with_another_models_tokenizer},
        in_flow=True,
    ),
    Case(  # an index error mid-run, once a text that long came along
        "max-length-past-the-model",
        ["--data", "{in}/new.csv", "--set", "preprocess.max_length=65"],
        ("preprocess.max_length: 65 tokens", "has positions for 64", "preprocess.max_length=64 or less"),
        {"new.csv": NEW_DATA},
        in_flow=True,
    ),
    Case(  # failed after the data step and the head phase: the probe is first read for the head's CKA
        "probe-file-missing",
        ["--data", "{in}/new.csv", "--set", "forgetting.probe_file={in}/no-such-probe.txt"],
        ("no-such-probe.txt: probe text file not found", "forgetting.probe_file"),
        {"new.csv": NEW_DATA},
        in_flow=True,
    ),
    Case(
        "layers-past-the-model",
        ["--data", "{in}/new.csv", "--set", "strategy.phases.1.train=[embeddings, 'layers[0:9]', head]"],
        ("strategy.phases.1.train", "'layers[0:9]' reaches past this model's", "use indices within"),
        {"new.csv": NEW_DATA},
        in_flow=True,
    ),
    # folders the run writes: failed mid-run as "unexpected FileNotFoundError", after the data step
    Case(
        "checkpoint-dir-unwritable",
        ["--data", "{in}/new.csv", "--set", "train.checkpoint_dir=/proc/bitune-checkpoints"],
        ("train.checkpoint_dir: cannot write to /proc/bitune-checkpoints", "writable folder"),
        {"new.csv": NEW_DATA},
    ),
    Case(  # a new experiment would keep the bad artifact root for good
        "artifact-location-unwritable",
        [
            "--data",
            "{in}/new.csv",
            "--set",
            "tracking.experiment=other",
            "--set",
            "tracking.artifact_location=/proc/art",
        ],
        ("tracking.artifact_location: cannot write to /proc/art", "writable folder"),
        {"new.csv": NEW_DATA},
    ),
    Case(  # the store was never opened (opening creates it): the data step ran, then MLflow failed
        "tracking-store-under-a-file",
        ["--data", "{in}/new.csv", "--set", "tracking.uri=sqlite:///{in}/afile/mlflow.db"],
        ("tracking.uri:", "afile is a file, not a folder", "SQLite file in a writable folder"),
        {"new.csv": NEW_DATA, "afile": b"a file where the store's folder should be"},
    ),
    Case(  # the flow run's parameters: kept in clear by the Prefect server
        "password-in-set",
        ["--set", "tracking.uri=http://admin:S3cret@127.0.0.1:1"],
        ("--set tracking.uri: its value holds a password", "MLFLOW_TRACKING_URI, or the params file"),
    ),
    Case(
        "empty-params-file",
        ["--params", "{in}/empty.yaml"],
        ("empty.yaml: empty params file", "leave out --params"),
        {"empty.yaml": b"# all commented out\n"},
    ),
    Case(
        "model-path-missing",
        ["--set", "model.name_or_path=/nonexistent/bert"],
        ("/nonexistent/bert is not a model folder", "Hugging Face id"),
    ),
]


@dataclass
class Outcome:
    status: int
    stdout: str
    stderr: str
    project: Path
    after: dict[str, object]
    seconds: float


@dataclass
class Catalogue:
    baseline: dict[str, object]  # a snapshot of an untouched copy of the trained project
    by_case: dict[str, Outcome]
    console_script: Outcome  # the first forked case again, through the real `bitune` executable
    forked_parent_stderr: str  # what the process the cases were forked from printed while importing
    default_home: Path  # HOME of the first in-flow case, run with PREFECT_HOME unset (so ~/.prefect)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def prefect_env(tmp_path_factory: pytest.TempPathFactory, shared_prefect: dict[str, str]) -> dict[str, str]:
    """The session's Prefect server (conftest's `shared_prefect`): each `bitune run` skips starting its
    own (5-10 s each). A Prefect home of the module's own, where the result-storage tests look, and
    no other PREFECT_ setting of this machine."""
    home = tmp_path_factory.mktemp("prefect-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "HF_HUB_OFFLINE": "1"}
    return env | shared_prefect


def bitune_run(root: Path, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "bitune"), "run", "--project", str(root), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def tiny_args(model_dir: Path) -> list[str]:
    return [arg for override in tiny_overrides(model_dir) for arg in ("--set", override)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert_dir, prefect_env) -> Path:  # type: ignore[no-untyped-def]
    """A project after one good run: a data version in the remote and champion version 1."""
    root = make_project(tmp_path_factory.mktemp("project"), tiny_bert_dir)
    # as on a machine set to persist Prefect results by default: retrain must still persist none
    proc = bitune_run(
        root, tiny_args(tiny_bert_dir), prefect_env | {"PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true"}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = snapshot(root)
    assert state["champion"] == "1" and state["data.dvc"] and state["remote"]
    return root


def copy_project(root: Path, dest: Path) -> Path:
    """The project without its run outputs (.bitune, mlartifacts): what a failed run must protect."""
    shutil.copytree(root, dest, ignore=lambda d, names: [".bitune", "mlartifacts"] if d == str(root) else [])
    return dest


def snapshot(root: Path) -> dict[str, object]:
    """What a failed run must not change, in terms that compare across copies of the project."""

    def digest(folder: Path) -> dict[str, str]:
        return {
            str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }

    with sqlite3.connect(f"file:{root / 'mlflow.db'}?mode=ro", uri=True) as db:
        champion = db.execute(
            "select version from registered_model_aliases where alias = 'champion'"
        ).fetchone()
        versions = db.execute("select name, version from model_versions order by name, version").fetchall()
    return {
        "data.dvc": (root / "data.dvc").read_bytes(),
        "data": digest(root / "data"),
        "cache": digest(root / ".dvc" / "cache"),
        "remote": digest(root / ".dvc-storage"),
        "champion": str(champion[0]) if champion else None,
        "model_versions": versions,
        "top_level": sorted(p.name for p in root.iterdir() if p.name != ".bitune"),
    }


FORKED_CLI = Path(__file__).with_name("forked_cli.py")


def prepare(case: Case, trained: Path, folder: Path, model_dir: Path) -> list[str]:
    """`folder`/project (a copy of the trained project) and `folder`/inputs; the arguments after `run`."""
    project, inputs = copy_project(trained, folder / "project"), folder / "inputs"
    inputs.mkdir()
    for name, content in case.files.items():
        if callable(content):
            content(inputs / name)
        else:
            (inputs / name).write_bytes(content)
    return [
        "--project",
        str(project),
        *tiny_args(model_dir),
        *(a.replace("{in}", str(inputs)) for a in case.args),
    ]


def finish(folder: Path, status: int, stdout: str, stderr: str, seconds: float) -> Outcome:
    (folder / "stderr.txt").write_text(stderr)
    return Outcome(status, stdout, stderr, folder / "project", snapshot(folder / "project"), seconds)


def run_real(folder: Path, args: list[str], env: dict[str, str]) -> Outcome:
    start = time.monotonic()
    proc = subprocess.run(
        [str(BIN / "bitune"), "run", *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    return finish(folder, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)


def run_forked(jobs: dict[Path, list[str]], env: dict[str, str]) -> tuple[list[Outcome], str]:
    """`bitune run ARGS` for each folder's ARGS, forked from one process (tests/forked_cli.py)."""
    folders = list(jobs)
    spec = [
        {"argv": ["run", *jobs[f]], "stdout": str(f / "stdout.txt"), "stderr": str(f / "stderr.txt")}
        for f in folders
    ]
    jobs_file = folders[0].parent / "forked-jobs.json"
    jobs_file.write_text(json.dumps(spec))
    proc = subprocess.run(
        [sys.executable, str(FORKED_CLI), str(jobs_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    outcomes = [
        finish(f, r["status"], (f / "stdout.txt").read_text(), (f / "stderr.txt").read_text(), r["seconds"])
        for f, r in zip(folders, results, strict=True)
    ]
    return outcomes, proc.stderr


@pytest.fixture(scope="module")
def outcomes(trained, tiny_bert_dir, prefect_env, tmp_path_factory) -> Catalogue:  # type: ignore[no-untyped-def]
    """Every case on its own copy of the trained project: the flow's cases as real processes, WORKERS at
    a time, beside one process that forks the CLI's cases from itself."""
    cases_dir = tmp_path_factory.mktemp("cases")
    baseline = snapshot(copy_project(trained, cases_dir / "baseline"))
    args = {case.id: prepare(case, trained, cases_dir / case.id, tiny_bert_dir) for case in CASES}
    forked = [c.id for c in CASES if not c.in_flow]
    script_args = prepare(
        next(c for c in CASES if c.id == forked[0]), trained, cases_dir / "console-script", tiny_bert_dir
    )
    # one failed flow run with Prefect's default home, ~/.prefect, under a HOME of its own
    default_home = cases_dir / "default-home"
    default_home.mkdir()
    home_env = {k: v for k, v in prefect_env.items() if k != "PREFECT_HOME"} | {"HOME": str(default_home)}
    first_in_flow = next(c.id for c in CASES if c.in_flow)
    with ThreadPoolExecutor(WORKERS) as pool:
        real = {
            c.id: pool.submit(
                run_real, cases_dir / c.id, args[c.id], home_env if c.id == first_in_flow else prefect_env
            )
            for c in CASES
            if c.in_flow
        }
        script = pool.submit(run_real, cases_dir / "console-script", script_args, prefect_env)
        forked_outcomes, parent_stderr = run_forked({cases_dir / i: args[i] for i in forked}, prefect_env)
        by_case = dict(zip(forked, forked_outcomes, strict=True)) | {i: f.result() for i, f in real.items()}
        return Catalogue(baseline, by_case, script.result(), parent_stderr, default_home)


def test_catalogue_is_large_and_distinct() -> None:
    assert len(CASES) >= 20 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_in_one_line_and_changes_nothing(case: Case, outcomes: Catalogue) -> None:
    outcome = outcomes.by_case[case.id]
    assert outcome.status != 0, outcome.stdout[-2000:]
    assert "Traceback" not in outcome.stdout + outcome.stderr
    # the CLI's own checks fail before Prefect says anything: a case that prints Prefect lines now
    # reaches the flow (mark it in_flow if that is meant)
    lines = [
        line
        for line in outcome.stderr.splitlines()
        if line.strip() and not (case.in_flow and PREFECT_INFO.match(line))
    ]
    assert len(lines) == 2, outcome.stderr
    error, details = lines
    assert (
        error.startswith("error: ") and details.startswith("(details in ") and details.endswith("bitune.log)")
    )
    for part in case.expect:
        assert part in error, (part, error)
    assert outcome.after == outcomes.baseline


def test_the_forked_cli_fails_as_the_console_script_does(outcomes: Catalogue) -> None:
    """The catalogue's CLI cases run forked from a process that imported the CLI (tests/forked_cli.py):
    the first of them, run by the real `bitune` executable, gives the same status and output, and the
    imports printed nothing that each real run would have printed too."""
    script = outcomes.console_script
    forked = outcomes.by_case[next(c.id for c in CASES if not c.in_flow)]
    assert script.status == forked.status != 0
    assert script.stderr.replace(str(script.project), "PROJECT") == forked.stderr.replace(
        str(forked.project), "PROJECT"
    )
    assert script.stdout == forked.stdout
    assert outcomes.forked_parent_stderr == ""


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def test_prefect_results_stay_out_of_the_prefect_home(prefect_env, outcomes: Catalogue) -> None:  # type: ignore[no-untyped-def]
    """Prefect writes a failed flow run's exception to its result storage whatever `persist_result` says,
    by default to the Prefect home's storage/ (~/.prefect/storage): outside the project, never cleaned,
    on a shared machine readable by the other users. No run of this module, good or failed, writes there."""
    home = Path(prefect_env["PREFECT_HOME"])
    assert [c for c in CASES if c.in_flow]  # some of the runs were failed flow runs
    assert files_under(home / "storage") == []


def test_with_prefect_home_unset_a_failed_run_writes_nothing_under_home_prefect(outcomes: Catalogue) -> None:
    """The same with Prefect's default home, `~/.prefect`: the case ran with PREFECT_HOME unset and
    a HOME of its own, so the path bitune compares with is the expanded default."""
    case = next(c for c in CASES if c.in_flow)
    assert outcomes.by_case[case.id].status == 2
    assert files_under(outcomes.default_home / ".prefect" / "storage") == []
    assert len(files_under(outcomes.by_case[case.id].project / ".bitune" / "prefect-results")) == 1


@pytest.mark.parametrize("case", [c for c in CASES if c.in_flow], ids=[c.id for c in CASES if c.in_flow])
def test_a_failed_flow_run_keeps_its_prefect_result_in_the_project(case: Case, outcomes: Catalogue) -> None:
    assert len(files_under(outcomes.by_case[case.id].project / ".bitune" / "prefect-results")) == 1


def test_a_completed_run_persists_no_results_even_when_prefect_is_told_to(trained: Path) -> None:
    """retrain needs none (no task retries or Prefect caching; resume is bitune's own): persist_result=False
    is set on the flow, so a machine-wide PREFECT_RESULTS_PERSIST_BY_DEFAULT=true (set for the module's
    good run) writes nothing, in the project or (test above) in the Prefect home."""
    assert (trained / ".bitune").is_dir()
    assert files_under(trained / ".bitune" / "prefect-results") == []


def test_timings(outcomes: Catalogue) -> None:
    """Not a target, a record: seconds per case (shown with -rA), the slow ones being flow-level ones."""
    seconds = {case: round(o.seconds, 1) for case, o in outcomes.by_case.items()}
    print(f"seconds per case (flow cases {WORKERS} at a time, the rest forked one by one): {seconds}")
    assert all(s < 300 for s in seconds.values())


def test_prefect_queue_drain_warnings_stay_off_the_terminal(tmp_path: Path) -> None:
    """Prefect's EventsWorker warns "Still processing items" at exit: a second line after an error."""
    import logging

    from flows.console_logging import route_tracebacks

    names = ("EventsWorker", "APILogWorker", "prefect._internal.concurrency")
    root = logging.getLogger()
    saved = ({n: logging.getLogger(n).level for n in names}, list(root.handlers))
    try:
        route_tracebacks(tmp_path / "bitune.log")
        for name in names:
            assert not logging.getLogger(name).isEnabledFor(logging.WARNING), name
            assert logging.getLogger(name).isEnabledFor(logging.ERROR), name
    finally:
        for name, level in saved[0].items():
            logging.getLogger(name).setLevel(level)
        for handler in root.handlers[:]:
            if handler not in saved[1]:
                root.removeHandler(handler)
                handler.close()
