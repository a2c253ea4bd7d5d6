"""Wall time of a no-op `bitune run`: data and params unchanged since the last successful run.

What a scheduled retrain costs when there is nothing new: CLI start-up and imports, Prefect's
temporary server, the data step (materialise, `dvc add`, `dvc push` of an unchanged version) and
the skip check in MLflow. Run it in a project where `bitune run` has completed once with the same
params; it refuses to start otherwise, because there the run would train.

    .venv/bin/python bench/noop_run.py --project . --repeat 3 --out bench/results/noop-run.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

TARGET_S = 20.0
STAMP = re.compile(r"^(\d\d):(\d\d):(\d\d\.\d{3}) \| \w+ +\| (.*)$")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=Path("."), help="project folder that has run once")
    parser.add_argument("--params", type=Path, default=Path("params/default.yaml"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    args = parser.parse_args(argv)
    root = args.project.resolve()
    params_file = args.params if args.params.is_absolute() else root / args.params

    previous = last_success(root, params_file)
    if previous is None:
        print(
            f"{root}: no finished run with the current data and params, so `bitune run` would train; "
            "run it once there first",
            file=sys.stderr,
        )
        return 2
    runs = [timed_run(root, params_file) for _ in range(args.repeat)]
    failed = [r for r in runs if not r["skipped"]]
    report = {
        "benchmark": "noop_run",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "project": str(root),
        "params": str(params_file),
        "previous_run": previous,
        "prefect_api": os.environ.get("PREFECT_API_URL") or "temporary server per run",
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "runs": runs,
        "median_s": round(statistics.median(r["seconds"] for r in runs), 2),
        "min_s": round(min(r["seconds"] for r in runs), 2),
        "target_s": TARGET_S,
    }
    report["meets_target"] = report["median_s"] < TARGET_S and not failed
    print_table(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    return 1 if failed else 0


def last_success(root: Path, params_file: Path) -> str | None:
    """The run a no-op would point to, found without changing the project; None if the run would train.

    The data version is only known without side effects when data/ already holds exactly the bytes
    the source gives (then it is data.dvc's md5); anything else means new data, so a real run.
    """
    from bitune.data.sources import read_source
    from bitune.params import load_params
    from bitune.pipeline import pipeline_key
    from tasks import dvc_store
    from tasks.runs import previous_success_fn
    from tasks.tracking import TrackingSettings

    params = load_params(params_file)
    data_dir = root / params.data.dir
    version = dvc_store.data_version(root)
    if version is None or not data_dir.is_dir():
        return None
    if params.data.source != "data":
        wanted = read_source(params.data, data_dir).files
        present = {
            p.name: p.read_bytes() for p in data_dir.iterdir() if p.is_file() and p.name != ".gitignore"
        }
        if present != wanted:
            return None
    return previous_success_fn(
        TrackingSettings.from_params(params.tracking, root), pipeline_key(version, params)
    )


def timed_run(root: Path, params_file: Path) -> dict[str, Any]:
    """One `bitune run`, timed from outside; stage times from Prefect's log line stamps."""
    command = [
        str(Path(sys.executable).parent / "bitune"),
        "run",
        "--project",
        str(root),
        "--params",
        str(params_file),
    ]
    started = time.time()
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.time() - started
    stamps: dict[str, float] = {}
    day = datetime.fromtimestamp(started).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    for line in proc.stderr.splitlines() + proc.stdout.splitlines():
        if match := STAMP.match(line):
            h, m, s, message = match.groups()
            at = day + int(h) * 3600 + int(m) * 60 + float(s)
            if "Starting temporary server" in message:
                stamps.setdefault("server_start", at)  # imports and params are done
            elif "Beginning flow run" in message:
                stamps.setdefault("server_up", at)  # imports and the Prefect server are done
            elif "Finished in state" in message:
                stamps["flow_done"] = at  # the last one is the flow's own
    stages = {}
    if "server_start" in stamps and "server_up" in stamps:
        stages["imports_s"] = round(stamps["server_start"] - started, 2)
        stages["prefect_server_s"] = round(stamps["server_up"] - stamps["server_start"], 2)
    if "server_up" in stamps:
        stages["start_to_flow_s"] = round(stamps["server_up"] - started, 2)
    if "server_up" in stamps and "flow_done" in stamps:
        stages["flow_s"] = round(stamps["flow_done"] - stamps["server_up"], 2)  # data step + skip check
    if "flow_done" in stamps:
        stages["shutdown_s"] = round(started + seconds - stamps["flow_done"], 2)
    return {
        "seconds": round(seconds, 2),
        "exit_code": proc.returncode,
        "skipped": proc.returncode == 0 and "Nothing to do" in proc.stdout,
        **stages,
    }


def print_table(report: dict[str, object]) -> None:
    runs = report["runs"]
    assert isinstance(runs, list)
    print(
        f"no-op bitune run in {report['project']} ({report['cpus']} CPUs, load {report['load_average_1m']})"
    )
    columns = ("seconds", "imports_s", "prefect_server_s", "start_to_flow_s", "flow_s", "shutdown_s")
    print("run  " + "  ".join(f"{c:>16}" for c in columns) + "  skipped")
    for i, r in enumerate(runs, start=1):
        cells = "  ".join(f"{float(r.get(c, float('nan'))):>16.2f}" for c in columns)
        print(f"{i:>3}  {cells}  {r['skipped']}")
    verdict = "meets" if report["meets_target"] else "misses"
    median, least = report["median_s"], report["min_s"]
    print(f"median {median:.2f} s, min {least:.2f} s: {verdict} the {TARGET_S:.0f} s target")


if __name__ == "__main__":
    sys.exit(main())
