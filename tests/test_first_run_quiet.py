"""A first `bitune run` makes mlflow.db: MLflow's INFO lines about its tables stay off the terminal.

Found in a README walkthrough: `make run` on a fresh clone printed "INFO mlflow.store.db.utils:
Creating initial MLflow database tables..." and "Updating database tables" among bitune's lines.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

# the CLI's order: the flow's modules (MLflow among them) imported, then its logging set up
FIRST_RUN = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from flows.console_logging import quiet_defaults, route_tracebacks
    quiet_defaults()
    import flows.retrain
    route_tracebacks(Path(sys.argv[1]) / ".bitune/logs/bitune.log")
    from mlflow.tracking import MlflowClient
    MlflowClient(f"sqlite:///{sys.argv[1]}/mlflow.db").search_experiments()
    """
)


def test_a_new_mlflow_store_is_made_without_library_lines(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", FIRST_RUN, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "mlflow.db").stat().st_size > 0  # the store was made here, not found
    output = proc.stdout + proc.stderr
    assert "Creating initial MLflow database tables" not in output, output
    assert "Updating database tables" not in output, output
