"""bitune's MLflow tag names live in `bitune.tag_names` alone, with the values existing stores hold.

A tag name spelled out again somewhere else can drift from it, and a search filter or a registry reader
with a typo matches nothing without an error: so no module under bitune/, tasks/ or flows/ spells one
(as a string, a part of an f-string, or inside an MLflow filter) but `bitune/tag_names.py`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from bitune import tag_names

ROOT = Path(__file__).resolve().parents[1]
TAG_NAMES_FILE = ROOT / "bitune" / "tag_names.py"
SCANNED = ("bitune", "tasks", "flows")
# a tag named in an MLflow search filter: tags.`bitune.x` or tags.bitune.x
FILTERED_TAG = re.compile(r"tags\.`?(bitune\.[A-Za-z0-9_.]+)")

# What MLflow stores already hold: a changed value would orphan every run and version tagged before.
# Spelled out here on purpose, not read from the module under test.
STORED = {
    "PREFIX": "bitune.",
    "PIPELINE": "bitune.pipeline",
    "PIPELINE_KEY": "bitune.pipeline_key",
    "STRATEGY": "bitune.strategy",
    "DATA_VERSION": "bitune.data_version",
    "CLOSED_STALE_RUNS": "bitune.closed_stale_runs",
    "MODEL_VERSION": "bitune.model_version",
    "GATE": "bitune.gate",
    "PHASE": "bitune.phase",
    "ROUND": "bitune.round",
    "FEATURE_CACHE": "bitune.feature_cache",
    "RESUMED_FROM_EPOCH": "bitune.resumed_from_epoch",
    "RESUMED_FROM_RUN": "bitune.resumed_from_run",
    "REUSED_FROM_RUN": "bitune.reused_from_run",
    "TEST_SPLIT": "bitune.test_split",
    "PARAMS_DIGEST": "bitune.params_digest",
    "SOURCE": "bitune.source",
    "GATE_TEST_ROWS": "bitune.gate_test_rows",
    "GATE_EXCLUDED_ROWS": "bitune.gate_excluded_rows",
    "MANUAL_GATE": "bitune.manual_gate",
    "PREVIOUS_CHAMPION": "bitune.previous_champion",
    "PROMOTION": "bitune.promotion",
    "ROLLED_BACK": "bitune.rolled_back",
    "RESTORED": "bitune.restored",
    "CHAMPION_MOVE_PREFIX": "bitune.champion.move.",
}


def constants() -> dict[str, str]:
    return {k: v for k, v in vars(tag_names).items() if k.isupper() and isinstance(v, str)}


def docstrings(tree: ast.AST) -> set[int]:
    """The ids of the docstring nodes: prose may name a tag."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def spelled_tags(source: str, names: set[str]) -> list[tuple[int, str]]:
    """(line, text) of each string in `source`, f-string parts included, that is one of `names` or
    filters MLflow runs on a bitune tag by its spelled-out name."""
    tree = ast.parse(source)
    skip = docstrings(tree)
    hits = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in skip:
            continue
        if node.value in names or FILTERED_TAG.search(node.value):
            hits.append((node.lineno, node.value))
    return hits


def test_the_names_are_the_ones_stores_hold() -> None:
    assert constants() == STORED


def test_each_name_is_typed_final() -> None:
    tree = ast.parse(TAG_NAMES_FILE.read_text())
    assigned = [n for n in tree.body if isinstance(n, ast.Assign | ast.AnnAssign)]
    assert assigned
    for node in assigned:
        assert isinstance(node, ast.AnnAssign), ast.unparse(node)
        assert ast.unparse(node.annotation) == "Final[str]", ast.unparse(node)


def test_names_are_unique_and_prefixed() -> None:
    values = list(constants().values())
    assert len(values) == len(set(values))
    assert all(v.startswith(tag_names.PREFIX) and v.startswith("bitune.") for v in values)
    assert all(re.fullmatch(r"bitune\.[a-z_.]*", v) for v in values)


def test_tag_names_imports_nothing_but_typing() -> None:
    tree = ast.parse(TAG_NAMES_FILE.read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names} | {
        n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
    }
    assert imported <= {"__future__", "typing"}


@pytest.mark.parametrize(
    "source",
    [
        'client.set_tag(run_id, "bitune.gate", summary)',
        "f = f\"attributes.status = 'RUNNING' and tags.`bitune.pipeline_key` = '{key}'\"",
        'key = f"bitune.champion.move.{n:04d}"',
        "f = \"tags.bitune.pipline_key != ''\"",  # a typo is caught too, in a filter
    ],
)
def test_the_scan_sees_a_spelled_out_tag(source: str) -> None:
    assert spelled_tags(source, set(constants().values()))


def test_the_scan_leaves_prose_and_other_names() -> None:
    source = '"""Reads tag `bitune.gate`."""\nMETA = "bitune.json"\nlog = logging.getLogger("bitune")\n'
    assert spelled_tags(source, set(constants().values())) == []


def test_no_module_spells_a_tag_name_itself() -> None:
    names = set(constants().values())
    files = [p for d in SCANNED for p in sorted((ROOT / d).rglob("*.py")) if p != TAG_NAMES_FILE]
    assert len(files) > 50
    found = [
        f"{path.relative_to(ROOT)}:{line}: {text!r}"
        for path in files
        for line, text in spelled_tags(path.read_text(), names)
    ]
    assert found == [], "use bitune.tag_names instead:\n" + "\n".join(found)
