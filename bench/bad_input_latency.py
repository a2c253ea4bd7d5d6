"""Seconds from `bitune run` to its one-line error, for bad inputs a user types most often.

Each case runs the real CLI in a fresh scratch project (params/ copied, git initialised, no data
version yet), `--repeat` times; the table shows the median and the JSON every time. What it
measures is what a user waits for after a typo: the CLI's own start-up and whatever it imports
before it can tell. The baseline is `--set nosuch=1` (a params error, said before any library
loads), so each case's ratio to it is what its check costs on this machine.

    .venv/bin/python bench/bad_input_latency.py --repeat 3 --out bench/results/bad-input-latency.json

`--src DIR` runs another checkout's code instead (a `git worktree` of an older commit), with this
environment, so a before/after pair is measured on one machine in one hour.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BITUNE = Path(sys.executable).with_name("bitune")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cases() -> dict[str, tuple[list[str], dict[str, str]]]:
    """name -> (extra arguments, extra environment)."""
    down = f"http://127.0.0.1:{closed_port()}"
    return {
        "params-typo (baseline)": (["--set", "nosuch=1"], {}),
        "model-path-missing": (["--set", "model.name_or_path=/nonexistent/bert"], {}),
        "hub-id-not-cached-offline": (["--set", "model.name_or_path=bitune-bench/no-such-model"], {}),
        "mlflow-server-down": (["--set", f"tracking.uri={down}"], {}),
        "prefect-server-down": ([], {"PREFECT_API_URL": f"{down}/api"}),
    }


def time_case(args: list[str], env: dict[str, str], src: Path | None) -> tuple[float, int, str]:
    with tempfile.TemporaryDirectory() as scratch:
        project = Path(scratch)
        shutil.copytree(REPO / "params", project / "params")
        subprocess.run(["git", "init", "-q"], cwd=project, check=True)
        command = [str(BITUNE)]
        run_env = os.environ | {"HF_HUB_OFFLINE": "1"} | env
        if src is not None:
            command = [sys.executable, "-c", "from flows.cli import app; app()"]
            run_env["PYTHONPATH"] = str(src)
        started = time.perf_counter()
        proc = subprocess.run(
            [*command, "run", "--project", str(project), *args],
            cwd=project,  # not the repository: `python -c` puts the working folder first on sys.path
            capture_output=True,
            text=True,
            env=run_env,
            timeout=300,
        )
        seconds = time.perf_counter() - started
    error = next((line for line in proc.stderr.splitlines() if line.startswith("error:")), "")
    return seconds, proc.returncode, error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    parser.add_argument("--src", type=Path, default=None, help="run this checkout's code (a worktree)")
    args = parser.parse_args(argv)
    src = args.src.resolve() if args.src else None
    rows = []
    for name, (extra, env) in cases().items():
        runs = [time_case(extra, env, src) for _ in range(args.repeat)]
        seconds = [s for s, _, _ in runs]
        statuses = sorted({status for _, status, _ in runs})
        rows.append(
            {
                "case": name,
                "seconds": seconds,
                "median_s": statistics.median(seconds),
                "exit": statuses,
                "error": runs[-1][2],
            }
        )
    baseline = rows[0]["median_s"]
    print(f"{'case':28} {'median s':>9} {'× baseline':>11} {'exit':>5}  error")
    for row in rows:
        row["ratio_to_baseline"] = row["median_s"] / baseline
        print(
            f"{row['case']:28} {row['median_s']:9.2f} {row['ratio_to_baseline']:11.2f} {row['exit']!s:>5}  "
            f"{row['error'][:70]}"
        )
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "git_commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=src or REPO, capture_output=True, text=True
        ).stdout.strip(),
        "src": str(src or REPO),
        "repeat": args.repeat,
        "rows": rows,
    }
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    bad = [r["case"] for r in rows if r["exit"] != [2] or not r["error"]]
    if bad:
        print(f"not a one-line error with exit 2: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
