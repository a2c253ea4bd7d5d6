"""Learning curves across phases, with the phase boundaries marked."""

from __future__ import annotations

from pathlib import Path


def plot_learning_curves(histories: list[tuple[str, list[dict[str, float]]]], path: Path) -> Path:
    """One x-axis of epochs across all phases; a dashed line where each phase starts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    offset = 0
    for key, history in histories:
        xs = [offset + int(h["epoch"]) for h in history]
        if xs:
            top.plot(xs, [h.get("val_accuracy", float("nan")) for h in history], marker=".", label=key)
            bottom.plot(xs, [h.get("train_loss", float("nan")) for h in history], marker=".", label=key)
            for ax in (top, bottom):
                ax.axvline(offset + 0.5, color="grey", linestyle="--", linewidth=0.8)
            top.text(offset + 0.6, 1.0, key, va="top", fontsize=8, transform=top.get_xaxis_transform())
        offset += len(history)
    top.set_ylabel("validation accuracy")
    bottom.set_ylabel("train loss")
    bottom.set_xlabel("epoch (all phases)")
    top.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
