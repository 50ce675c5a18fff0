"""Line plots of training curves (held-out KL vs step, per method) written as PNG files."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def plot_curves(
    curves: Mapping[str, Sequence[tuple[float, float]]],
    path: str | os.PathLike,
    title: str,
    ylabel: str,
    xlabel: str = "step",
    logy: bool = False,
) -> str:
    """Draw one line per entry of `curves` (`name -> [(step, value), ...]`) and save a PNG at `path`.

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend switch), so it is safe
    in headless runs and threads. Parent directories are created. Returns the path written.
    """
    if not curves:
        raise ValueError("plot_curves needs at least one curve")
    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, points in curves.items():
        if len(points) == 0:
            raise ValueError(f"curve {name!r} has no points")
        xs, ys = zip(*sorted(points), strict=True)
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=name)
    if logy:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format="png")
    return path
