"""`bitune promote | rollback | compare | ui`: the model registry and experiment comparison."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach this module's commands to the `bitune` app."""
