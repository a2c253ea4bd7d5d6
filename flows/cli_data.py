"""`bitune data versions | checkout | diff`: the data versions DVC holds, going back to one, and
what changed between two, row by row."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from bitune.errors import DataError
from bitune.tag_names import DATA_VERSION
from flows.cli_errors import console, errors, one_line_errors
from flows.cli_options import ParamsOpt, ProjectOpt, SetOpt
from tasks import dvc_store

if TYPE_CHECKING:
    import pandas as pd

    from bitune.data.version_diff import LabelChange, VersionDiff
    from bitune.params import Params


def register(app: typer.Typer) -> None:
    """Attach this module's commands to the `bitune` app."""
    data = typer.Typer(help="Data versions: list them, restore one, compare two.", no_args_is_help=True)
    data.command("versions")(versions)
    data.command("checkout")(checkout)
    data.command("diff")(diff)
    app.add_typer(data, name="data")


def versions(
    params: ParamsOpt = Path("params/default.yaml"),
    set_: SetOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", metavar="", help="print JSON instead of a table")
    ] = False,
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
    remote = dvc_store.resolve_remote(root, loaded.data.remote)
    table = versions_table(known, rows, escape(f"data versions ({remote})"))
    console.print(table)
    console.print(
        "* current (data.dvc). Restore one with [bold]bitune data checkout VERSION[/] (a prefix works)."
    )
    for line in unpushed_notes(known):
        console.print(escape(line), highlight=False)
    if "://" in remote:
        console.print(
            escape(f"The remote {remote} is not a local folder: which versions it holds was not checked."),
            highlight=False,
        )


def checkout(
    version: Annotated[
        str, typer.Argument(help="data version: md5 from `bitune data versions`, or a prefix")
    ],
    params: ParamsOpt = Path("params/default.yaml"),
    set_: SetOpt = None,
    force: Annotated[
        bool, typer.Option("--force", metavar="", help="discard edits in data/ that data.dvc lacks")
    ] = False,
    project: ProjectOpt = Path("."),
) -> None:
    """Restore data/ and data.dvc to VERSION from the DVC remote; on failure both stay as they were.

    Holds the project's retrain lock: a run in progress would version data/ over the checkout.
    """
    from bitune.project_lock import hold_project

    root = project.resolve()
    with one_line_errors(root):
        loaded = _params(root, params, set_)
        known = dvc_store.known_versions(root, loaded.data.remote, _mlflow_sightings(root, loaded)[0])
        wanted = dvc_store.resolve_version(version, known)  # a bad version: before anything is written
        with hold_project(root):
            dvc_store.ensure_repo(root, loaded.data.remote)
            full = dvc_store.checkout(root, wanted, str(loaded.data.dir), force, [v.md5 for v in known])
    console.print(escape(f"{loaded.data.dir}/ and data.dvc are at data version {full}."))
    console.print("Train on it with [bold]bitune run[/]; commit data.dvc to keep it.")


def diff(
    old: Annotated[str, typer.Argument(help="data version to compare from: md5 or a unique prefix")],
    new: Annotated[
        str | None, typer.Argument(help="data version to compare to (default: the current one, data.dvc)")
    ] = None,
    examples: Annotated[
        int, typer.Option("--examples", metavar="N", min=0, help="example rows per kind of change")
    ] = 3,
    as_json: Annotated[bool, typer.Option("--json", metavar="", help="print JSON instead of tables")] = False,
    params: ParamsOpt = Path("params/default.yaml"),
    set_: SetOpt = None,
    project: ProjectOpt = Path("."),
) -> None:
    """Rows added, removed and relabelled from OLD to NEW, with per-label counts; data/ is not touched.

    Rows match by text as the splits see it: case, spacing and Unicode form do not count.

    A repeated text counts each copy: one copy less is one row removed.
    """
    from bitune.data.version_diff import diff_versions

    root = project.resolve()
    with one_line_errors(root):
        loaded = _params(root, params, set_)
        known = dvc_store.known_versions(root, loaded.data.remote, _mlflow_sightings(root, loaded)[0])
        old_md5 = _dir_md5(dvc_store.resolve_version(old, known))
        new_md5 = _dir_md5(dvc_store.resolve_version(new, known) if new else _current_version(root))
        frames = _read_versions(root, loaded, [old_md5, new_md5])
        changes = diff_versions(frames[old_md5], frames[new_md5])
        uncommitted = new is None and dvc_store.has_local_changes(root, str(loaded.data.dir))
    if uncommitted:  # on stderr, so it reaches a user who pipes the JSON too
        errors.print(
            f"[yellow]note:[/] {escape(str(loaded.data.dir))}/ has edits data.dvc does not record; "
            "they are not in this diff.",
            highlight=False,
        )
    if as_json:
        console.print_json(json.dumps(_diff_as_dict(old_md5, new_md5, changes, examples)))
    else:
        _print_diff(old_md5, new_md5, changes, examples)


def _current_version(root: Path) -> str:
    current = dvc_store.data_version(root)
    if current is None:
        raise DataError(
            f"{dvc_store.DVC_FILE}: no current data version to compare with; name both versions, "
            "e.g. `bitune data diff OLD NEW` (see `bitune data versions`)"
        )
    return current


def _read_versions(root: Path, loaded: Params, md5s: list[str]) -> dict[str, pd.DataFrame]:
    """Each version's rows, read from copies of its files in a temporary folder (deleted after)."""
    from bitune.data.version_diff import read_version

    frames = {}
    with tempfile.TemporaryDirectory(prefix="bitune-diff-") as tmp:
        for md5 in dict.fromkeys(md5s):
            folder = Path(tmp) / md5.removesuffix(".dir")  # errors reading a file name its version
            dvc_store.materialise_version(root, md5, loaded.data.remote, folder)
            frames[md5] = read_version(folder, loaded.data)
    return frames


def _print_diff(old: str, new: str, changes: VersionDiff, examples: int) -> None:
    """The per-label table, a one-line summary and a few rows of each change; fits 80 columns."""
    if not changes.changed:
        console.print(
            escape(f"No changes from {old} to {new}: ")
            + f"the same {changes.new_rows} rows and labels (case, spacing and row order do not count)."
        )
        return
    console.print(escape(f"{old} → {new}"), highlight=False)  # 75 columns: as a table title it would wrap
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("label", overflow="fold", max_width=24)
    for name in ("old", "new", "change", "added", "removed", "relabelled"):
        table.add_column(name, justify="right", no_wrap=True)
    for c in changes.labels:
        table.add_row(
            escape(c.label),
            str(c.old),
            str(c.new),
            f"{c.new - c.old:+d}",
            str(c.added),
            str(c.removed),
            _relabelled_cell(c),
        )
    table.add_section()
    table.add_row(
        "[bold]all[/]",
        str(changes.old_rows),
        str(changes.new_rows),
        f"{changes.new_rows - changes.old_rows:+d}",
        str(len(changes.added)),
        str(len(changes.removed)),
        str(len(changes.relabelled)),
    )
    console.print(table)
    console.print(
        f"{len(changes.added)} rows added, {len(changes.removed)} removed, {len(changes.relabelled)} "
        f"relabelled (same text, another label), {changes.unchanged} unchanged."
    )
    shown = [
        ("added", "+", [(r.label, r.text) for r in changes.added]),
        ("removed", "-", [(r.label, r.text) for r in changes.removed]),
        ("relabelled", "~", [(f"{r.old_label} → {r.new_label}", r.text) for r in changes.relabelled]),
    ]
    for kind, mark, rows in shown:
        if not rows or not examples:
            continue
        first = f", first {examples}" if len(rows) > examples else ""
        console.print(f"\n[bold]{kind}[/] ({len(rows)}{first}):")
        labels = [_cut(label, 30) for label, _ in rows[:examples]]
        pad = max(map(len, labels))
        for label, (_, text) in zip(labels, rows[:examples], strict=True):
            head = f"  {mark} {label:<{pad}}  "
            line = head + _cut(" ".join(text.split()), max(console.width - len(head), 10))
            console.print(escape(line), highlight=False)


def _relabelled_cell(change: LabelChange) -> str:
    """`+2 -1`: rows relabelled to this label, and away from it."""
    moved = [f"+{change.relabelled_in}"] * bool(change.relabelled_in)
    moved += [f"-{change.relabelled_out}"] * bool(change.relabelled_out)
    return " ".join(moved) or "0"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _diff_as_dict(old: str, new: str, changes: VersionDiff, examples: int) -> dict[str, object]:
    """Counts in full; `examples` rows of each kind of change, their texts whole."""
    return {
        "old": old,
        "new": new,
        "rows": {"old": changes.old_rows, "new": changes.new_rows},
        "added": len(changes.added),
        "removed": len(changes.removed),
        "relabelled": len(changes.relabelled),
        "unchanged": changes.unchanged,
        "labels": [asdict(c) for c in changes.labels],
        "examples": {
            "added": [asdict(r) for r in changes.added[:examples]],
            "removed": [asdict(r) for r in changes.removed[:examples]],
            "relabelled": [asdict(r) for r in changes.relabelled[:examples]],
        },
    }


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


def unpushed_notes(known: list[dvc_store.KnownVersion]) -> list[str]:
    """For the versions the remote lacks (marked in the table): what a checkout of them can do, and the
    fix. Those in this clone's cache first, then those nowhere here."""
    notes = []
    for in_cache in (True, False):
        md5s = [v.md5[:8] for v in known if v.in_remote is False and v.in_cache is in_cache]
        if not md5s:
            continue
        it, are = ("it", "is") if len(md5s) == 1 else ("them", "are")
        what, where = (
            ("only in this clone's cache (a checkout works here, in no other clone)", "here")
            if in_cache
            else (
                f"not in this clone's cache either, so no checkout can restore {it}",
                f"in the clone that versioned {it}",
            )
        )
        notes.append(
            f"Not in the remote: {', '.join(md5s)} {are} {what}; run `{dvc_store.PUSH_ALL}` {where}."
        )
    return notes


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
        runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{DATA_VERSION}` != ''")
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
        md5 = run.data.tags[DATA_VERSION]
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
        "in_cache": version.in_cache,
        "current": version.current,
    }
