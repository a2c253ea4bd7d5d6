"""`bitune data versions | checkout`: the data versions DVC holds, and going back to one."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from flows.cli_common import ParamsOpt, ProjectOpt, SetOpt, console, errors, one_line_errors
from tasks import dvc_store

if TYPE_CHECKING:
    from bitune.params import Params

RUN_TAG = "bitune.data_version"


def register(app: typer.Typer) -> None:
    """Attach this module's commands to the `bitune` app."""
    data = typer.Typer(help="Data versions: list them, restore one.", no_args_is_help=True)
    data.command("versions")(versions)
    data.command("checkout")(checkout)
    app.add_typer(data, name="data")


def versions(
    params: ParamsOpt = Path("params/default.yaml"),
    set_: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    project: ProjectOpt = Path("."),
) -> None:
    """List the data versions git, the DVC remote and MLflow runs know of, oldest first."""
    root = project.resolve()
    with one_line_errors(root):
        loaded = _params(root, params, set_)
        sightings, rows = _mlflow_sightings(root, loaded)
        known = dvc_store.known_versions(root, loaded.data.remote, sightings)
    if as_json:
        console.print_json(json.dumps([_as_dict(v, rows) for v in known]))
        return
    if not known:
        console.print("No data versions yet: `bitune run` versions the data it trains on.")
        return
    title = escape(f"data versions ({dvc_store.resolve_remote(root, loaded.data.remote)})")
    table = versions_table(known, rows, title)
    console.print(table)
    console.print(
        "* current (data.dvc). Restore one with [bold]bitune data checkout VERSION[/] (a prefix works)."
    )


def checkout(
    version: Annotated[
        str, typer.Argument(help="data version: md5 from `bitune data versions`, or a prefix")
    ],
    params: ParamsOpt = Path("params/default.yaml"),
    set_: SetOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="discard edits in data/ that data.dvc lacks")
    ] = False,
    project: ProjectOpt = Path("."),
) -> None:
    """Restore data/ and data.dvc to VERSION from the DVC remote; on failure both stay as they were."""
    root = project.resolve()
    with one_line_errors(root):
        loaded = _params(root, params, set_)
        dvc_store.ensure_repo(root, loaded.data.remote)
        known = dvc_store.known_versions(root, loaded.data.remote, _mlflow_sightings(root, loaded)[0])
        full = dvc_store.checkout(
            root, dvc_store.resolve_version(version, known), str(loaded.data.dir), force
        )
    console.print(escape(f"{loaded.data.dir}/ and data.dvc are at data version {full}."))
    console.print("Train on it with [bold]bitune run --set data.source=data[/]; commit data.dvc to keep it.")


def versions_table(known: list[dvc_store.KnownVersion], rows: dict[str, int], title: str) -> Table:
    """Fits 80 columns: no borders, the md5 and the date never cut; files and sources wrap instead.
    `rows`: md5 to row count, for the versions a run trained on (others show `?`)."""
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=0)
    table.add_column("", width=1, no_wrap=True)
    table.add_column("version", no_wrap=True, min_width=36)
    table.add_column("first seen", no_wrap=True, min_width=len("2026-01-31 23:59"))
    table.add_column("rows", justify="right", no_wrap=True)
    table.add_column("files", overflow="fold")
    table.add_column("seen in")
    for v in known:
        missing = "" if v.in_remote is not False else " [red](not in the remote)[/]"
        count = rows.get(_dir_md5(v.md5))
        table.add_row(
            "*" if v.current else "",
            v.md5,
            v.first_seen.astimezone().strftime("%Y-%m-%d %H:%M") if v.first_seen else "?",
            str(count) if count is not None else "?",
            escape(", ".join(v.files)) if v.files is not None else "?",
            ", ".join(v.sources) + missing,
        )
    return table


def _dir_md5(md5: str) -> str:
    return md5 if md5.endswith(".dir") else f"{md5}.dir"


def _params(root: Path, params: Path, overrides: list[str] | None) -> Params:
    from bitune.params import load_params

    return load_params(params if params.is_absolute() else root / params, list(overrides or []))


def _mlflow_sightings(root: Path, params: Params) -> tuple[list[dvc_store.Sighting], dict[str, int]]:
    """Parent runs' data versions, and the row count each run logged for its version (the `rows` of
    its dataset input's profile, counted when the data was validated: nothing is read from data/).
    An unreachable or absent store only means fewer sightings."""
    from tasks.tracking import TrackingSettings

    settings = TrackingSettings.from_params(params.tracking, root)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # a listing should not wait minutes
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    if settings.uri.startswith("sqlite:///") and not Path(settings.uri.removeprefix("sqlite:///")).exists():
        return [], {}  # a client would create the database: listing must not change the project
    try:
        client = settings.client()
        experiment = client.get_experiment_by_name(settings.experiment)
        if experiment is None:
            return [], {}
        runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{RUN_TAG}` != ''")
    except Exception as exc:  # connection errors come as several types; the listing goes on without
        errors.print(
            f"[yellow]note:[/] MLflow at {escape(settings.uri)} not read ({type(exc).__name__}); "
            "versions from git and the remote only",
            highlight=False,
            soft_wrap=True,
        )
        return [], {}
    sightings, rows = [], {}
    for run in runs:
        md5 = run.data.tags[RUN_TAG]
        sightings.append(
            dvc_store.Sighting(md5, datetime.fromtimestamp(run.info.start_time / 1000, UTC), "mlflow")
        )
        for logged in run.inputs.dataset_inputs if run.inputs else []:
            count = _profile_rows(logged.dataset.profile) if logged.dataset.digest == md5 else None
            if count is not None:
                rows[_dir_md5(md5)] = count
    return sightings, rows


def _profile_rows(profile: str | None) -> int | None:
    try:
        return int(json.loads(profile or "{}")["rows"])
    except (ValueError, KeyError, TypeError):
        return None  # a run from before the profile, or one a user logged by hand


def _as_dict(version: dvc_store.KnownVersion, rows: dict[str, int]) -> dict[str, object]:
    return {
        "md5": version.md5,
        "first_seen": version.first_seen.isoformat() if version.first_seen else None,
        "rows": rows.get(_dir_md5(version.md5)),
        "files": version.files,
        "sources": version.sources,
        "in_remote": version.in_remote,
        "current": version.current,
    }
