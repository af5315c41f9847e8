"""Charts as inline SVG, drawn by matplotlib on the server: no script, no asset from a CDN, and
the page reads the same in any browser. Each function returns the <svg> element's text."""

from __future__ import annotations

import io
import threading
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLOURS = ("#2b6cb0", "#9fb4c7", "#2f7d4a", "#d69e2e", "#b83232", "#6b46c1")
# pyplot keeps global state: one figure at a time across the server's threads.
_drawing = threading.Lock()


def _svg(figure: plt.Figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _axes(width: float, height: float):
    figure, axis = plt.subplots(figsize=(width, height))
    axis.spines[["top", "right"]].set_visible(False)
    return figure, axis


def bars(
    labels: Sequence[str],
    values: Sequence[float],
    title: str,
    *,
    errors: Sequence[tuple[float, float]] | None = None,
    horizontal: bool = False,
    width: float = 6.0,
    height: float = 2.6,
) -> str:
    """Bars, optionally with (low, high) interval whiskers."""
    with _drawing:
        figure, axis = _axes(width, height)
        positions = range(len(values))
        whiskers = None
        if errors is not None:
            whiskers = [
                [v - low for v, (low, _) in zip(values, errors, strict=True)],
                [high - v for v, (_, high) in zip(values, errors, strict=True)],
            ]
        if horizontal:
            axis.barh(positions, values, xerr=whiskers, color=COLOURS[0], capsize=4)
            axis.set_yticks(list(positions), labels)
            axis.invert_yaxis()
        else:
            colours = [COLOURS[i % 2] for i in positions]
            axis.bar(positions, values, yerr=whiskers, color=colours, capsize=5)
            axis.set_xticks(list(positions), labels)
        axis.set_title(title, fontsize=10, loc="left")
        return _svg(figure)


def lines(
    xs: Sequence[str],
    series: dict[str, Sequence[float]],
    title: str,
    *,
    width: float = 6.0,
    height: float = 2.6,
) -> str:
    """One line per series over shared x labels (versions, days)."""
    with _drawing:
        figure, axis = _axes(width, height)
        for colour, (name, values) in zip(COLOURS, series.items(), strict=False):
            axis.plot(list(xs), list(values), marker="o", color=colour, label=name)
        if len(series) > 1:
            axis.legend(fontsize=8, frameon=False)
        step = max(1, len(xs) // 8)
        axis.set_xticks(list(range(0, len(xs), step)), [xs[i] for i in range(0, len(xs), step)])
        axis.tick_params(axis="x", labelsize=8)
        axis.set_title(title, fontsize=10, loc="left")
        return _svg(figure)


def stacked(
    labels: Sequence[str],
    parts: dict[str, Sequence[float]],
    title: str,
    *,
    width: float = 7.0,
    height: float = 3.0,
) -> str:
    """Horizontal stacked bars: each label's mix of parts (e.g. lifecycle stages)."""
    with _drawing:
        figure, axis = _axes(width, height)
        left = [0.0] * len(labels)
        for colour, (name, values) in zip(COLOURS, parts.items(), strict=False):
            axis.barh(range(len(labels)), values, left=left, color=colour, label=name)
            left = [a + b for a, b in zip(left, values, strict=True)]
        axis.set_yticks(list(range(len(labels))), labels, fontsize=8)
        axis.invert_yaxis()
        axis.legend(fontsize=8, frameon=False, ncol=len(parts), loc="lower right")
        axis.set_title(title, fontsize=10, loc="left")
        return _svg(figure)
