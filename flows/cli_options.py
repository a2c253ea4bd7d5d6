"""The options every `bitune` command spells the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ParamsOpt = Annotated[Path, typer.Option("--params", metavar="FILE", help="params file (YAML)")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help="override a param (repeatable)")
]
ProjectOpt = Annotated[
    Path, typer.Option("--project", metavar="DIR", help="project folder (holds data.dvc, mlflow.db)")
]
PortOpt = Annotated[int, typer.Option("--port", metavar="PORT", help="port to listen on")]
HostOpt = Annotated[
    str,
    typer.Option("--host", metavar="HOST", help="address to bind; keep loopback unless you mean to share"),
]
