"""Credentials never reach a tracking server or a terminal: what the params log and print is masked."""

from __future__ import annotations

import json
import re
from typing import Any

from bitune.errors import ParamsError

URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][\w+.-]*://)(?P<user>[^/@\s:]*):(?P<secret>[^/@\s]+)@")
SECRET_KEY = re.compile(r"(password|secret|token|access_key|api_key)", re.IGNORECASE)


def redact(key: str, value: str) -> str:
    """Credentials never reach a tracking server: `user:pass@` in URLs and secret-named keys are masked."""
    if SECRET_KEY.search(key.rsplit(".", 1)[-1]):
        return "***"
    return URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", value)


def check_overrides_hold_no_credentials(overrides: list[str]) -> None:
    """`--set` values become the Prefect flow run's (and a deployment's) parameters, which the Prefect
    server keeps in clear for anyone with its UI: a password there is refused, with where it can go."""
    for override in overrides:
        key, _, value = override.partition("=")
        if redact(key.strip(), value) != value:
            where = "MLFLOW_TRACKING_URI, or " if key.strip() == "tracking.uri" else ""
            raise ParamsError(
                f"--set {key.strip()}: its value holds a password, which Prefect would keep in clear with "
                f"the flow run's parameters; put it in {where}the params file (--params) instead"
            )


def redact_tree(tree: Any, key: str = "") -> Any:
    if isinstance(tree, dict):
        return {k: redact_tree(v, k) for k, v in tree.items()}
    if isinstance(tree, list):
        return [redact_tree(v, key) for v in tree]
    return redact(key, tree) if isinstance(tree, str) else tree


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """{'a': {'b': 1}} -> {'a.b': '1'}; lists of mappings get an index."""
    out: dict[str, str] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
    elif isinstance(tree, list) and tree and all(isinstance(v, dict) for v in tree):
        for i, value in enumerate(tree):
            out.update(flatten(value, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = json.dumps(tree) if isinstance(tree, list) else str(tree)
    return out
