"""What a trained model is a function of (the pipeline key), and where that pipeline's outputs live.

The key names the phase outputs (`.bitune/runs/<key>/`), the resume checkpoints and the MLflow tag
`bitune.pipeline_key` that makes a rerun on the same data and params a no-op: a key that changed for
the same inputs would retrain every existing project (tests/test_pipeline_key.py pins it).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from bitune.data.splits import SPLIT_METHOD
from bitune.model.content_digest import pretrained_content_digest
from bitune.params import Params

RUNS = Path(".bitune") / "runs"  # in the project: one folder of phase outputs per pipeline key


def pipeline_key(data_md5: str, params: Params, columns: tuple[str, str] | None = None) -> str:
    """What a trained model is a function of: the data version, the params that shape training
    (`Params.digest`), the pretrained model's files (`model.name_or_path` names a folder, which can be
    overwritten in place with other weights), and how rows are split (a new split method must not
    resume phases trained on another split).

    `columns`: the data/ columns the run reads (`DataVersion.columns`). They stand in for
    `data.text_column`/`data.label_column`, which name the source's columns: a plain run after
    `--data f.tsv --set data.text_column=sentence` reads the same rows of data/ by `text`, and
    must find that run instead of training the same model again.
    """
    if columns is not None:
        text_column, label_column = columns
        data = params.data.model_copy(update={"text_column": text_column, "label_column": label_column})
        params = params.model_copy(update={"data": data})
    pretrained = pretrained_content_digest(params.model)
    digest = hashlib.sha256(f"{params.digest()}-{pretrained}-{SPLIT_METHOD}".encode()).hexdigest()[:16]
    return f"{data_md5.removesuffix('.dir')[:12]}-{digest}"


def pipeline_dir(root: Path, pipeline_key: str) -> Path:
    """Where one pipeline's phase outputs live; the key is data version + params digest."""
    return root / RUNS / pipeline_key
