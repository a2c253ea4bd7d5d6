"""The pipeline key, pinned: a key that changes for the same inputs retrains every existing project.

The values were computed before `pipeline_key` moved out of `tasks.runs`; a refactor that changes one
of them is not a refactor. Change them only with a deliberate change of what the key hashes.
"""

from __future__ import annotations

from pathlib import Path

from bitune.params import load_params
from bitune.pipeline import pipeline_key

DEFAULT = Path(__file__).resolve().parents[1] / "params" / "default.yaml"
DATA_MD5 = "0" * 32 + ".dir"


def test_the_key_of_the_default_params_is_pinned() -> None:
    """The bundled model is a local folder (hashed by content) of a pinned package: stable anywhere."""
    assert pipeline_key(DATA_MD5, load_params(DEFAULT, [])) == "000000000000-91e2a3c035c3d34d"


def test_the_key_with_the_columns_read_is_pinned() -> None:
    params = load_params(DEFAULT, [])
    assert pipeline_key(DATA_MD5, params, ("review", "stars")) == "000000000000-f39054a06f125bf3"


def test_the_key_of_an_uncached_hub_id_is_pinned() -> None:
    params = load_params(DEFAULT, ["model.name_or_path=nobody/not-cached-anywhere", "model.revision=v2"])
    assert pipeline_key("abcdef0123456789abcdef0123456789", params) == "abcdef012345-a150ff5e516b4166"
