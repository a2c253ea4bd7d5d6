"""A params error names where the bad value came from: the `--set` as typed, the params file, or the
strategy preset; with the closest known key for a typo and the expected type for a wrong value."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bitune.errors import ParamsError
from bitune.params import load_params

PARAMS = Path(__file__).resolve().parents[1] / "params" / "default.yaml"
PRESET = PARAMS.parent / "strategies" / "bidirectional.yaml"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "strategy.round=2",
            f"--set strategy.round: unknown key; did you mean strategy.rounds? (strategy keys: {PRESET})",
        ),
        (
            "strategy.phases.1.anchr=0.1",
            "--set strategy.phases.1.anchr: unknown key; did you mean strategy.phases.1.anchor? "
            f"(strategy keys: {PRESET})",
        ),
        ("train.sed=1", f"--set train.sed: unknown key; did you mean train.seed? (keys: {PARAMS})"),
        (  # a misspelt section: the override invented `strategi`, and the message says which key is unknown
            "strategi.rounds=2",
            f"--set strategi.rounds: unknown key strategi; did you mean strategy? (keys: {PARAMS})",
        ),
        (  # nothing close: the keys there are, instead of a guess
            "registry.xyz=1",
            "--set registry.xyz: unknown key; registry has model_name, metric, min_delta, max_cka_drop "
            f"(keys: {PARAMS})",
        ),
        ("train.seed=abc", "--set train.seed: expected an integer, got 'abc'"),
        (
            "strategy.phases.0.epochs=1.5",
            "--set strategy.phases.0.epochs: expected an integer or null, got 1.5",
        ),
        ("train.device=gpu", "--set train.device: expected one of auto, cpu, cuda, got 'gpu'"),
        ("train.torch_threads=many", "--set train.torch_threads: expected an integer or null, got 'many'"),
        ("data.labels=5", "--set data.labels: expected a list like [a, b] or null, got 5"),
        ("data.split.validation=0.9", "--set data.split.validation: Input should be less than 0.5 (got 0.9)"),
        (  # bitune's own validators quote the value already
            "strategy.phases.0.train=[headz]",
            "--set strategy.phases.0.train: unknown group 'headz'; use head, pooler, embeddings, extras, "
            "layers[i:j] (layers[:] for all)",
        ),
        (  # a bare `layers` once passed here and failed mid-run, after the data step and the head phase
            "strategy.phases.1.train=[embeddings, layers, head]",
            "--set strategy.phases.1.train: unknown group 'layers'; use head, pooler, embeddings, extras, "
            "layers[i:j] (layers[:] for all)",
        ),
        (
            "strategy=nonsense",
            "--set strategy: unknown preset 'nonsense'; choose one of bidirectional, full, gradual_unfreeze, "
            "head_only, lp_ft",
        ),
    ],
)
def test_an_override_error_names_the_set_and_the_fix(override: str, message: str) -> None:
    with pytest.raises(ParamsError) as raised:
        load_params(PARAMS, [override])
    assert str(raised.value) == message


def test_an_override_setting_a_whole_section_names_the_key_inside_it() -> None:
    with pytest.raises(ParamsError) as raised:
        load_params(PARAMS, ["train={sed: 1}"])
    assert (
        str(raised.value) == f"--set train: unknown key train.sed; did you mean train.seed? (keys: {PARAMS})"
    )


@pytest.fixture
def params_copy(tmp_path: Path) -> Path:
    shutil.copytree(PARAMS.parent, tmp_path / "params")
    return tmp_path / "params" / "default.yaml"


def test_an_unknown_key_in_the_params_file_names_the_file(params_copy: Path) -> None:
    params_copy.write_text(params_copy.read_text() + "\npreprocess:\n  lowercas: true\n")
    with pytest.raises(ParamsError) as raised:
        load_params(params_copy, ["train.seed=3"])  # a good override does not take the blame
    assert (
        str(raised.value)
        == f"{params_copy}: preprocess.lowercas: unknown key; did you mean preprocess.lowercase?"
    )


def test_an_unknown_key_in_the_preset_names_the_preset(params_copy: Path) -> None:
    preset = params_copy.parent / "strategies" / "bidirectional.yaml"
    preset.write_text(preset.read_text().replace("rounds: 1", "roundz: 1"))
    with pytest.raises(ParamsError) as raised:
        load_params(params_copy)
    assert str(raised.value) == f"{preset}: strategy.roundz: unknown key; did you mean strategy.rounds?"


def test_a_wrong_type_in_the_file_still_names_the_file(params_copy: Path) -> None:
    params_copy.write_text(params_copy.read_text().replace("  seed: 0\n", "  seed: abc\n", 1))
    with pytest.raises(ParamsError, match=rf"^{params_copy}: train.seed: Input should be a valid integer"):
        load_params(params_copy)
