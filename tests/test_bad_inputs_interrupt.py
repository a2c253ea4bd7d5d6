"""What an interrupted run says it left, for the cases a real interrupt in tests does not reach.

Ctrl-C itself (SIGINT to the whole foreground process group, Prefect's temporary server too), its one
line and the resume after it run for real in tests/test_run_timeout.py, on the same project as the
run-time limit; tests/test_crash_resume.py signals the bitune process alone, mid-epoch.
"""

from __future__ import annotations

from flows.cli import left_after_interrupt


def test_an_interrupted_force_run_does_not_promise_a_plain_rerun_resumes_it() -> None:
    """--force clears the pipeline's checkpoints when it starts; a plain run may find nothing to do."""
    said = left_after_interrupt("aaaaaaaa11.dir", "aaaaaaaa11.dir", force=True)
    assert said == (
        "data, registry and champion are unchanged; bitune run --force starts over; a plain bitune run "
        "resumes, or does nothing if an earlier run already trained this data with these params"
    )
