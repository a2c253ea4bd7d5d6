"""The evaluation a reviewer reads: per-class table, confusion matrix, calibration, worst mistakes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bitune.evaluation.metrics import ClassReport, confusion, named_metrics, per_class_report

WORST = 10


def _plot_confusion(matrix: np.ndarray, names: list[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 1.2 * len(names) + 1.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", color="black")
    ax.set_title("Confusion matrix (test)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_reliability(probs: np.ndarray, labels: np.ndarray, path: Path, bins: int = 10) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    confidence, correct = probs.max(1), probs.argmax(1) == labels
    edges = np.linspace(0, 1, bins + 1)
    centers, accuracy = [], []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            centers.append((lo + hi) / 2)
            accuracy.append(correct[in_bin].mean())
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.bar(centers, accuracy, width=1 / bins, alpha=0.7, edgecolor="black", label="model")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability diagram (test)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _cell(text: str) -> str:
    """A text as one Markdown table cell."""
    return text[:200].replace("|", "/").replace("\n", " ")


def _class_row(c: ClassReport) -> str:
    """One table row; recall and F1 of a label with no test rows are undefined, not 0."""
    if not c.support:
        return f"| {c.label} | {c.precision:.3f} | n/a | n/a | 0 |"
    return f"| {c.label} | {c.precision:.3f} | {c.recall:.3f} | {c.f1:.3f} | {c.support} |"


def evaluate_predictions(
    texts: list[str], labels: torch.Tensor, logits: torch.Tensor, names: list[str], out_dir: Path
) -> tuple[dict[str, float], list[Path]]:
    """`named_metrics` (the names the champion's re-score uses too), plus the report files in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = named_metrics(logits, labels, names)
    classes = per_class_report(logits, labels, names)
    probs = torch.softmax(logits.float(), -1).numpy()
    y = labels.numpy()
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != y)
    worst = wrong[np.argsort(-probs[wrong, pred[wrong]])][:WORST]

    lines = [
        "# Evaluation report (test split)",
        "",
        f"Rows: {len(y)} · accuracy {metrics['test/accuracy']:.4f} · "
        f"macro-F1 {metrics['test/macro_f1']:.4f} · "
        f"ECE {metrics['test/ece']:.4f} · loss {metrics['test/loss']:.4f}",
        "",
        "| label | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
        *(_class_row(c) for c in classes),
        "",
        f"## Most confident mistakes (up to {WORST})",
        "",
        "| text | true | predicted | confidence |",
        "|---|---|---|---|",
        *(
            f"| {_cell(texts[i])} | {names[y[i]]} | {names[pred[i]]} | {probs[i, pred[i]]:.3f} |"
            for i in worst
        ),
    ]
    report = out_dir / "evaluation_report.md"
    report.write_text("\n".join(lines) + "\n")
    paths = [
        report,
        _plot_confusion(confusion(logits, labels, len(names)), names, out_dir / "confusion_matrix.png"),
        _plot_reliability(probs, y, out_dir / "reliability_diagram.png"),
    ]
    return metrics, paths
