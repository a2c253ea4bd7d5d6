"""`bitune compare --plot`: the legend sits outside the bars, however many runs, however high their scores."""

from __future__ import annotations

import pytest

from bitune.evaluation.run_comparison import RunRow, comparison_figure


def runs(count: int, score: float) -> list[RunRow]:
    return [
        RunRow(
            run_id=f"{i:08d}abcdef",
            name=f"run {i}",
            status="FINISHED",
            strategy="head,bottom",
            data_version="0123abcd.dir",
            metrics={"test/accuracy": score, "test/macro_f1": score, "test/cka_to_pretrained": score},
            seconds=60.0,
            model_version=str(i + 1),
            aliases=["champion"] if i == 0 else [],
        )
        for i in range(count)
    ]


@pytest.mark.parametrize("count", [1, 3, 12])
@pytest.mark.parametrize("score", [0.3, 1.0])
def test_the_legend_covers_no_bar_and_stays_on_the_figure(count: int, score: float) -> None:
    fig = comparison_figure(runs(count, score))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    (ax,) = fig.axes
    legend = ax.get_legend()
    assert legend is not None and [t.get_text() for t in legend.get_texts()] == [
        "accuracy",
        "macro_f1",
        "cka_to_pretrained",
    ]
    box = legend.get_window_extent(renderer)
    bars = [patch.get_window_extent(renderer) for patch in ax.patches]
    assert len(bars) == 3 * count
    assert not [bar for bar in bars if box.overlaps(bar)], "the legend covers bars"
    assert not box.overlaps(ax.get_window_extent(renderer)), "the legend sits inside the axes"
    assert fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1), "the legend is cut off"
