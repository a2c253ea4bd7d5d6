"""Credentials never reach a tracking server or a terminal: what the params log and print is masked."""

from __future__ import annotations

import json
import re
from typing import Any

URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][\w+.-]*://)(?P<user>[^/@\s:]*):(?P<secret>[^/@\s]+)@")
SECRET_KEY = re.compile(r"(password|secret|token|access_key|api_key)", re.IGNORECASE)


def redact(key: str, value: str) -> str:
    """Credentials never reach a tracking server: `user:pass@` in URLs and secret-named keys are masked."""
    if SECRET_KEY.search(key.rsplit(".", 1)[-1]):
        return "***"
    return URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", value)


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
