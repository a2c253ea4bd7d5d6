"""`bitune compare`'s rows and plot: the retrain runs side by side, with what forgetting cost."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

COMPARED = ("test/accuracy", "test/macro_f1", "test/cka_to_pretrained")


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

    @property
    def short_id(self) -> str:
        """What tells runs apart: names repeat (strategy and data version, shown in their own columns)."""
        return self.run_id[:8]


def plot_comparison(rows: list[RunRow], path: Path) -> Path:
    """Grouped bars per run: test accuracy, macro-F1 and CKA to pretrained (what forgetting cost)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(rows) + 2), 4))
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
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("bitune runs")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
