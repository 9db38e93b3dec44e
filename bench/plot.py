"""One figure for every scenario: a panel each, drawn from the same numbers as the tables."""
from __future__ import annotations

import textwrap
from pathlib import Path

from bench.report import Result

OURS_COLOUR, PEER_COLOUR, OTHER_COLOUR, SECOND_AXIS = "#2a7ab9", "#e3873c", "#9a9a9a", "#3b9b5a"
PEER_NAMES = ("LangChain", "LlamaIndex")


def _colour(name: str) -> str:
    if name.startswith("ours"):
        return OURS_COLOUR
    return PEER_COLOUR if name.startswith(PEER_NAMES) else OTHER_COLOUR


def _bars(ax, result: Result) -> None:
    (label, values), = result.plot.items()
    names = list(values)
    ax.barh(range(len(names)), [values[n] for n in names], color=[_colour(n) for n in names])
    ax.set_yticks(range(len(names)), ["\n".join(textwrap.wrap(n, 34)) for n in names], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(result.plot_ylabel if label == "seconds" else label, fontsize=8)
    if result.plot_log:
        ax.set_xscale("log")
    for i, n in enumerate(names):
        value = values[n]
        ax.annotate(f"{value:.3g}", (value, i), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    ax.margins(x=0.25)


def _lines(ax, result: Result) -> None:
    axes = [ax, ax.twinx()]
    for axis, colour, (label, values) in zip(axes, (OURS_COLOUR, SECOND_AXIS), result.plot.items()):
        points = sorted((float(x), y) for x, y in values.items())  # JSON made the sizes strings
        axis.plot([x for x, _ in points], [y for _, y in points], marker="o", color=colour, label=label)
        axis.set_ylabel(label, color=colour, fontsize=8)
        axis.set_ylim(bottom=0)
    ax.set_xlabel("sections", fontsize=8)


def draw(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(9, 2.6 * len(results)), squeeze=False)
    for ax, result in zip(axes[:, 0], results):
        (_lines if result.plot_kind == "lines" else _bars)(ax, result)
        ax.set_title(result.title, fontsize=9, loc="left")
        ax.tick_params(labelsize=7)
    fig.suptitle("sections vs the tools people use (blue: ours, orange: peers, grey: baselines)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
