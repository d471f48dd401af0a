"""Evaluation figures as PNG files: ROC curve, reliability diagram, confusion matrix.

Figures are built on matplotlib's object API and rendered by the Agg backend (no pyplot, no display,
no global state), so evaluation can run on headless accelerator hosts and in parallel.
"""

from __future__ import annotations

import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_DPI = 120


def _save(fig: Figure, path: str | os.PathLike) -> None:
  FigureCanvasAgg(fig)
  fig.tight_layout()
  fig.savefig(path, dpi=_DPI)


def plot_roc(
  path: str | os.PathLike,
  fpr: np.ndarray,
  tpr: np.ndarray,
  *,
  auc: float,
  operating_point: tuple[float, float],
  threshold: float,
  title: str,
) -> None:
  """ROC curve with the chance line and the operating point (1 - specificity, sensitivity)."""
  fig = Figure(figsize=(4.5, 4.5))
  ax = fig.add_subplot()
  ax.plot(fpr, tpr, color="tab:blue", label=f"ROC (AUC = {auc:.3f})")
  ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
  ax.plot(*operating_point, "o", color="tab:red", label=f"threshold {threshold:.3f}")
  ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity", ylabel="sensitivity", title=title)
  ax.set_aspect("equal")
  ax.legend(loc="lower right", fontsize="small")
  _save(fig, path)


def plot_reliability(
  path: str | os.PathLike,
  edges: np.ndarray,
  counts: np.ndarray,
  mean_prob: list[float | None],
  frac_pos: list[float | None],
  *,
  ece: float,
  title: str,
) -> None:
  """Observed frequency of class 1 against mean predicted probability per bin, counts beneath."""
  fig = Figure(figsize=(4.5, 5.5))
  top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1)})
  filled = [i for i, c in enumerate(counts) if c]
  top.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect calibration")
  top.plot(
    [mean_prob[i] for i in filled],
    [frac_pos[i] for i in filled],
    "o-",
    color="tab:blue",
    label=f"model (ECE = {ece:.3f})",
  )
  top.set(xlim=(0, 1), ylim=(0, 1), ylabel="fraction positive", title=title)
  top.legend(loc="upper left", fontsize="small")
  bottom.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="tab:grey")
  bottom.set(xlabel="predicted probability of class 1", ylabel="examples")
  _save(fig, path)


def plot_confusion(
  path: str | os.PathLike, matrix: np.ndarray, *, class_names: tuple[str, str], title: str
) -> None:
  """2x2 counts, rows true class, columns predicted class."""
  fig = Figure(figsize=(4, 3.6))
  ax = fig.add_subplot()
  ax.imshow(matrix, cmap="Blues")
  for (row, col), count in np.ndenumerate(matrix):
    color = "white" if count > matrix.max() / 2 else "black"
    ax.text(col, row, str(count), ha="center", va="center", color=color, fontsize="large")
  ax.set(
    xticks=(0, 1),
    yticks=(0, 1),
    xticklabels=class_names,
    yticklabels=class_names,
    xlabel="predicted",
    ylabel="true",
    title=title,
  )
  _save(fig, path)


def plot_unavailable(path: str | os.PathLike, *, reason: str, title: str) -> None:
  """A figure that says why the plot cannot be drawn, so every evaluation has the same files."""
  fig = Figure(figsize=(4.5, 2))
  ax = fig.add_subplot()
  ax.axis("off")
  ax.set_title(title)
  ax.text(0.5, 0.5, reason, ha="center", va="center", wrap=True)
  _save(fig, path)


def plot_froc(
  path: str | os.PathLike,
  fp_per_image: np.ndarray,
  sensitivity: np.ndarray,
  *,
  operating_points: dict[float, float],
  title: str,
) -> None:
  """Cluster sensitivity against false-positive regions per image, marked at the listed rates."""
  fig = Figure(figsize=(5, 4.2))
  ax = fig.add_subplot()
  ax.step(np.r_[0.0, fp_per_image], np.r_[0.0, sensitivity], where="post", color="tab:blue")
  for rate, value in operating_points.items():
    ax.plot(rate, value, "o", color="tab:red")
    ax.annotate(
      f"{value:.2f} at {rate:g}", (rate, value), textcoords="offset points", xytext=(4, -12)
    )
  right = max(3.0, float(fp_per_image.max()) if fp_per_image.size else 3.0)
  ax.set(xlim=(0, min(right, 8.0)), ylim=(0, 1.02), xlabel="false-positive regions per image")
  ax.set(ylabel="cluster sensitivity", title=title)
  ax.grid(alpha=0.3)
  _save(fig, path)
