"""How params enter the program: the params file, its strategy preset composed in, `--set` overrides
on top (lightning-hydra style), then one validation into `Params`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bitune.errors import ParamsError
from bitune.params.explain import ParamsOrigins, explain
from bitune.params.models import Params


class ParamsFileNotFound(ParamsError):
    """The params file is not there: the CLI says more when the folder it ran in is no project."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path}: params file not found; pass an existing file with --params")
        self.path = path


def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b=3' -> (['a', 'b'], 3); the value is read as YAML so types come out right."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"--set {text!r}: expected key=value, e.g. --set strategy.rounds=2")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def _set(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node: Any = tree
    for i, part in enumerate(path[:-1]):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise ParamsError(f"--set {'.'.join(path)}: {'.'.join(path[: i + 1])} is not a section")
        node = node.setdefault(part, {})
    last = path[-1]
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ParamsError(f"--set {'.'.join(path)}: {'.'.join(path[:-1])} is not a section")


def _yaml_error(path: Path, text: str, exc: yaml.YAMLError) -> ParamsError:
    """One line for a YAML syntax error: the line to fix and what is wrong there, a tab by name.

    An error found at the end of the file (an unclosed bracket or quote) points at the line where
    the unclosed construct starts, not at a line past the file's end.
    """
    mark = getattr(exc, "problem_mark", None)
    if mark is None:
        return ParamsError(f"{path}: not valid YAML; fix the syntax")
    lines = text.splitlines()
    context = getattr(exc, "context_mark", None)
    line = context.line if mark.line >= len(lines) and context is not None else mark.line
    problem = " ".join(str(getattr(exc, "problem", "") or "").split())
    if "'\\t'" in problem:
        return ParamsError(
            f"{path} line {line + 1}: a tab character; YAML indents with spaces only, replace it"
        )
    what = f" ({problem})" if problem else ""
    return ParamsError(f"{path} line {line + 1}: not valid YAML{what}; fix the syntax there")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsFileNotFound(path) from None
    except IsADirectoryError:
        raise ParamsError(f"{path}: a folder, not a params file; pass a YAML file with --params") from None
    except UnicodeDecodeError as exc:
        raise ParamsError(f"{path}: not UTF-8 (byte {exc.object[exc.start]:#x}); save it as UTF-8") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _yaml_error(path, text, exc) from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ParamsError(f"{path}: expected a mapping of sections (data, model, strategy, ...)")
    return loaded


def strategies_dir(params_file: Path) -> Path:
    return params_file.parent / "strategies"


def compose(params_file: Path, overrides: list[str] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    """Read the params file, compose the strategy preset in, apply overrides: a plain mapping."""
    return _compose(params_file, list(overrides))[0]


def _compose(params_file: Path, overrides: list[str]) -> tuple[dict[str, Any], Path | None]:
    """The composed mapping, and the strategy preset file composed into it (None: strategy inline)."""
    if params_file.parent.name == "strategies" and params_file.is_file():
        # a preset passed as the params file: it holds only the strategy's keys, and composing it
        # looked for presets in strategies/strategies/
        raise ParamsError(
            f"--params {params_file}: a strategy preset, not a params file; keep --params on a params "
            f"file (params/default.yaml) and choose the preset with --set strategy={params_file.stem}"
        )
    tree = _read_yaml(params_file)
    if not tree:
        raise ParamsError(
            f"{params_file}: empty params file; copy params/default.yaml and edit it, or leave out --params"
        )
    parsed = [parse_override(o) for o in overrides]
    chosen_by = f"{params_file}: strategy"
    for path, value in parsed:
        if path == ["strategy"]:
            tree["strategy"], chosen_by = value, "--set strategy"
    strategy = tree.get("strategy", "bidirectional")
    preset = None
    if isinstance(strategy, str):
        preset = strategies_dir(params_file) / f"{strategy}.yaml"
        if not preset.exists():
            known = sorted(p.stem for p in strategies_dir(params_file).glob("*.yaml"))
            if not known:  # a params file copied away from params/: its presets did not come along
                raise ParamsError(
                    f"{chosen_by}: preset {strategy!r} not found, no {strategies_dir(params_file)}/ folder "
                    "of presets next to the params file; keep the file in params/ or copy strategies/ along"
                )
            raise ParamsError(f"{chosen_by}: unknown preset {strategy!r}; choose one of {', '.join(known)}")
        tree["strategy"] = {"name": strategy, **_read_yaml(preset)}
    for path, value in parsed:
        if path != ["strategy"]:
            _set(tree, path, value)
    return tree, preset


def validate(
    tree: dict[str, Any],
    source: str = "params",
    overrides: list[str] = (),  # type: ignore[assignment]
    strategy_file: Path | None = None,
) -> Params:
    """Params from a composed mapping; an error names its source: the file, the preset or the `--set`."""
    try:
        return Params.model_validate(tree)
    except ValidationError as exc:
        typed = {tuple(parse_override(o)[0]): o.partition("=")[0].strip() for o in overrides}
        origins = ParamsOrigins(source, typed, strategy_file)
        raise ParamsError(explain(exc, Params, origins)) from None


def load_params(params_file: Path | str = Path("params/default.yaml"), overrides: list[str] = ()) -> Params:  # type: ignore[assignment]
    """The one way params enter the program."""
    params_file = Path(params_file)
    tree, preset = _compose(params_file, list(overrides))
    return validate(tree, str(params_file), list(overrides), preset)
