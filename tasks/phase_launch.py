"""Running a tuning phase on several processes: `accelerate launch` of `tasks.phase_worker`.

The training loop itself is unchanged under DDP (accelerate wraps the model and shards batches);
the task only starts the processes, waits, and reads the phase output that rank 0 wrote.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from bitune.errors import ParamsError, TrainingError
from bitune.params import TrainParams
from bitune.process_tether import tethered


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_command(job_file: Path, processes: int, launch_args: list[str]) -> list[str]:
    """`accelerate launch` arguments; on a machine without CUDA the processes talk over gloo."""
    args = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--dynamo_backend",
        "no",
        # precision is not the launcher's to choose: each worker's Accelerator is given train.precision
        # as resolved by bitune.device, and an explicit argument wins over what the launcher exports
        "--mixed_precision",
        "no",
    ]
    if "--num_machines" not in launch_args:
        args += ["--num_machines", "1"]
    if "--main_process_port" not in launch_args:
        args += ["--main_process_port", str(free_port())]
    return [*args, *launch_args, "-m", "tasks.phase_worker", str(job_file)]


def check_launch_args(train: TrainParams) -> None:
    """`train.launch_args` as `accelerate launch` parses them, said before the data step: a typo
    (`--num_machine`) failed the first distributed phase, after the data step."""
    if train.processes <= 1:
        return
    from accelerate.commands.launch import launch_command_parser

    argv = launch_command(Path("job.json"), train.processes, train.launch_args)[
        3:
    ]  # after `-m accelerate...`
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            _, unknown = launch_command_parser().parse_known_args(argv)
    except SystemExit:
        why = (said.getvalue().strip().splitlines() or ["refused"])[-1]
        raise ParamsError(
            f"train.launch_args: accelerate launch refuses them ({why}); see `accelerate launch --help`"
        ) from None
    if unknown:
        raise ParamsError(
            f"train.launch_args: accelerate launch does not accept {' '.join(unknown)}; "
            "see `accelerate launch --help`"
        )


def run_process_group(command: list[str], cwd: Path, env: dict[str, str], log: IO[str]) -> int:
    """Run `command` in a session of its own and wait; interrupted, stop every process it started.

    Cancelling the flow run (or SIGTERM, Ctrl-C, train.timeout_minutes passing) lands here as an
    exception, raised even while this waits (a signal handler raises it): subprocess.run would kill
    only the launcher, and the training ranks it started would go on holding the GPUs, and the next
    scheduled run would fail for want of memory. The whole group gets SIGTERM, then SIGKILL.
    """
    proc = subprocess.Popen(  # tethered: a kill -9 of bitune takes the launcher (and so its ranks) along
        tethered(command), cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        return proc.wait()
    except BaseException:
        stop_group(proc)
        raise


def stop_group(leader: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM to every process of `leader`'s group, SIGKILL to whatever is left after `grace_s`."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(leader.pid, signum)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace_s
        while signum == signal.SIGTERM and time.monotonic() < deadline:
            leader.poll()  # reaped, or the leader's zombie keeps the group alive
            try:
                os.killpg(leader.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
    leader.wait()


def run_distributed(
    job: dict[str, Any], job_file: Path, processes: int, launch_args: list[str], cwd: Path
) -> None:
    job_file.parent.mkdir(parents=True, exist_ok=True)
    job_file.write_text(json.dumps(job))
    log_file = job_file.with_suffix(".log")
    env = os.environ | {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with log_file.open("w") as log:
        returncode = run_process_group(launch_command(job_file, processes, launch_args), cwd, env, log)
    if returncode != 0:
        lines = log_file.read_text(errors="ignore").strip().splitlines()
        errors = [line for line in lines if "Error" in line and ":" in line] or lines[-1:] or ["no output"]
        raise TrainingError(
            f"train.processes={processes}: distributed phase failed ({errors[0][:200]}); see {log_file}"
        )
