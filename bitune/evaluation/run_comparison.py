"""`bitune compare`'s rows and plot: the retrain runs side by side, with what forgetting cost."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

COMPARED = ("test/accuracy", "test/macro_f1", "test/cka_to_pretrained")
SHOWN_IN_COLUMNS = frozenset({"strategy.name", "data.version"})  # `compare` has columns for these
# where a data version's rows came from: the data version pins the rows, so among runs of one version
# these tell apart only how each run was started (`--data f.csv` then a plain run reading data/)
SOURCE_KEYS = frozenset({"data.source", "data.text_column", "data.label_column", "data.demo_rows"})
UNSET = "-"  # a param one run logged and another did not (a key added in a later bitune)
MAX_VALUE_CHARS = 40  # a model path or a layer list stays one readable piece
MAX_PARAMS_SHOWN = 8  # two strategies differ in every phase key: the first few say enough


@dataclass(frozen=True)
class RunRow:
    """One parent run of the retrain flow, as `bitune compare` shows it."""

    run_id: str
    name: str
    status: str
    strategy: str
    data_version: str
    metrics: dict[str, float]
    seconds: float | None
    model_version: str | None
    aliases: list[str]
    params: dict[str, str] = field(default_factory=dict)  # as logged: dotted keys, `--set` spelling

    @property
    def short_id(self) -> str:
        """What tells runs apart: names repeat (strategy and data version, shown in their own columns)."""
        return self.run_id[:8]


def duration_text(seconds: float | None) -> str:
    """Wall time as a clock, m:ss (h:mm:ss from an hour): one format down the column, so runs compare
    at a glance and the column stays 4 to 7 characters wide."""
    if seconds is None:
        return UNSET
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def differing_params(rows: list[RunRow]) -> list[str]:
    """Keys of the logged params whose values are not the same in every run, sorted. Runs that logged
    no params (killed before logging) are left out: they would make every key differ. Runs of one
    data version differ in no `SOURCE_KEYS`."""
    logged = [r.params for r in rows if r.params]
    keys: set[str] = set().union(*logged) - SHOWN_IN_COLUMNS if logged else set()
    if len({r.data_version for r in rows if r.params}) == 1:
        keys -= SOURCE_KEYS
    return sorted(k for k in keys if len({p.get(k, UNSET) for p in logged}) > 1)


def param_differences(
    rows: list[RunRow], presets: Mapping[str, Mapping[str, str]] | None = None
) -> dict[str, str]:
    """Per run id, `key=value` of each param in which that run departs from the others, as `bitune
    run --set` takes them; empty when nothing differs.

    A key's usual value is the one most runs logged, when most did (a strict plurality); a run shows
    only the keys where it departs from that, so one changed epoch count is not lost among the
    dozens of keys two presets differ in. Without a plurality (two runs, say) every run shows the
    key. A run whose strategy differs from most runs' (the strategy column shows it) leaves out the
    `strategy.*` keys its preset brings: with `presets` (strategy name -> the params that preset
    resolves to, flat), it shows those where it departs from its own preset (`strategy.rounds=2` on
    an `lp_ft` run was hidden); without, all of them. `(common)`: the run departs in nothing; `?`: it
    logged no params (killed before logging).
    """
    keys = differing_params(rows)
    if not keys:
        return {}
    logged = [r for r in rows if r.params]
    usual = {k: _plurality([r.params.get(k, UNSET) for r in logged]) for k in keys}
    usual_strategy = _plurality([_strategy(r) for r in logged])
    out = {}
    for r in rows:
        if not r.params:
            out[r.run_id] = "?"
            continue
        own_preset = usual_strategy is not None and _strategy(r) != usual_strategy
        preset = (presets or {}).get(_strategy(r)) if own_preset else None
        departs = [
            k
            for k in keys
            if (usual[k] is None or r.params.get(k, UNSET) != usual[k])
            and not (own_preset and k.startswith("strategy.") and _as_preset(r.params, k, preset))
        ]
        out[r.run_id] = _assignments(r.params, departs) if departs else "(common)"
    return out


def _as_preset(params: dict[str, str], key: str, preset: Mapping[str, str] | None) -> bool:
    """The run's `key` is what its preset gives (or, with no preset known, taken to be)."""
    return preset is None or params.get(key, UNSET) == preset.get(key, UNSET)


def _strategy(row: RunRow) -> str:
    return row.params.get("strategy.name", row.strategy)


def _plurality(values: list[str]) -> str | None:
    """The value more runs share than any other, or None on a tie."""
    ranked = Counter(values).most_common(2)
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        return None
    return ranked[0][0]


def _assignments(params: dict[str, str], keys: list[str]) -> str:
    shown = [f"{k}={_value(params.get(k, UNSET))}" for k in keys[:MAX_PARAMS_SHOWN]]
    if len(keys) > MAX_PARAMS_SHOWN:
        shown.append(f"(+{len(keys) - MAX_PARAMS_SHOWN} more)")
    return " ".join(shown)


def _value(value: str) -> str:
    """Short, and quoted when it holds spaces, so the space-separated list stays unambiguous."""
    if len(value) > MAX_VALUE_CHARS:
        value = value[: MAX_VALUE_CHARS - 1] + "…"
    return f'"{value}"' if any(c.isspace() for c in value) else value


def comparison_figure(rows: list[RunRow]) -> Figure:
    """Grouped bars per run: test accuracy, macro-F1 and CKA to pretrained (what forgetting cost).

    The legend sits right of the axes: inside them it covered the bars of the last runs, and scores
    near 1 leave no empty corner to put it in."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, 1.2 * len(rows) + 2) + 1.6, 4))  # + the legend's column
    FigureCanvasAgg(fig)  # no pyplot: nothing global to switch or close
    ax = fig.add_subplot()
    width = 0.8 / len(COMPARED)
    for j, key in enumerate(COMPARED):
        values = [r.metrics.get(key, math.nan) for r in rows]
        ax.bar(
            [i + (j - 1) * width for i in range(len(rows))], values, width, label=key.removeprefix("test/")
        )
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(
        [f"{r.short_id} {r.strategy}\nv{r.model_version or '-'} {','.join(r.aliases)}" for r in rows],
        rotation=30,
        ha="right",
        fontsize=8,
    )
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test score")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=8)
    ax.set_title("bitune runs")
    fig.tight_layout()  # counts the legend: the axes shrink to leave it room
    return fig


def plot_comparison(rows: list[RunRow], path: Path) -> Path:
    """`comparison_figure` as a PNG at `path`; `tight` crops to what is drawn, the legend included."""
    path.parent.mkdir(parents=True, exist_ok=True)
    comparison_figure(rows).savefig(path, dpi=120, bbox_inches="tight")
    return path
