"""The short digest every cache and pipeline key is made of: one definition, so keys stay comparable.

Changing it changes every key: existing projects would retrain and rebuild their caches once.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def json_digest(payload: Any) -> str:
    """16 hex characters of the SHA-256 of `payload` as JSON with sorted keys."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
