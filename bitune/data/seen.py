"""Which texts a model has seen, as one 64-bit fingerprint per split key, small enough to ship with it.

Splits follow a hash of each text, so rows usually keep their part across data versions; but a change
of `data.split` re-splits everything, and the small-class top-up can move a row into test as rows are
added. The promotion gate then needs to know which of today's test rows the champion trained on (or
chose its epoch on), and the model folder is the one thing that travels with the champion.

The fingerprint is of `split_key` (what makes two texts the same for splitting) and not of the seed:
a re-split must not change it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from hashlib import blake2b
from pathlib import Path

import numpy as np
import pandas as pd

from bitune.data.splits import split_key

PREFIX = b"bitune-seen\0"


def text_key_fingerprints(texts: Iterable[object]) -> np.ndarray:
    """One int64 per text, in order: the first 8 bytes of a hash of its split key."""
    return np.array(
        [
            int.from_bytes(
                blake2b(PREFIX + split_key(t).encode(), digest_size=8).digest(), "big", signed=True
            )
            for t in texts
        ],
        dtype=np.int64,
    )


def seen_text_keys(texts: Iterable[object]) -> np.ndarray:
    """The sorted, unique fingerprints of `texts`: what a model folder stores."""
    return np.unique(text_key_fingerprints(texts))


def split_digest(texts: Sequence[object], labels: Sequence[object]) -> str:
    """A short, order-free digest of a split's rows (text key and label): two models whose test
    splits share it were scored on the same rows, and neither trained on them."""
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    rows = sorted(zip(text_key_fingerprints(texts).tolist(), map(str, labels), strict=True))
    digest = blake2b(b"bitune-split\0", digest_size=8)
    for key, label in rows:
        digest.update(f"{key}\t{label}\n".encode())
    return digest.hexdigest()


def texts_in(files: Sequence[Path]) -> list[str]:
    """The `text` column of prepared split parquets, in order (they keep the raw text)."""
    return [str(t) for f in files for t in pd.read_parquet(f, columns=["text"])["text"]]
