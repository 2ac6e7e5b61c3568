"""Evaluation reports: metrics.json, a per-class table (CSV and Markdown) and PNG plots.

Plots: a confusion matrix normalised per true class (single-label; rows read as recall), and
precision-recall curves per class (multi-label), each titled with its metric.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .metrics import precision_recall
from .rerun import written_recorded

_COLUMNS = ("class", "support", "ignored", "recall", "precision", "ap_voc07_11pt", "ap_area")


def report_files(folder: str | os.PathLike, multilabel: bool) -> list[Path]:
    """The files that :func:`write_report` writes into ``folder`` for a single- or multi-label task."""
    folder = Path(folder)
    plot = "precision_recall.png" if multilabel else "confusion_matrix.png"
    return [folder / "metrics.json", folder / "per_class.csv", folder / "per_class.md", folder / plot]


def write_report(folder: str | os.PathLike, metrics: dict, scores: np.ndarray, targets: np.ndarray,
                 ignore: np.ndarray | None = None, record: Callable[[Path], object] | None = None) -> list[Path]:
    """Write the report files into ``folder`` (created if needed), each whole or not at all;
    returns their paths (:func:`report_files`). ``ignore`` [N, K] (multi-label): the rows left out
    of class k's AP, left out of its curve too (VOC's difficult images). ``record``
    (:func:`vggfeat.rerun.recorder`): what records in each file how it was made, before the files
    are in place, so that a kill after any rename leaves files that the same command again knows
    for its own, not another report to refuse."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    multilabel = metrics["task"] != "single-label"
    written = report_files(folder, multilabel)
    columns = [c for c in _COLUMNS if c in metrics["per_class"][0]]
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(metrics["per_class"])
    # The files appear together once all are written: never one run's metrics beside another's plot.
    with written_recorded(written, [record] * len(written)) as (metrics_json, table_csv, table_md, plot):
        metrics_json.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        table_csv.write_text(table.getvalue(), encoding="utf-8", newline="")
        table_md.write_text(_markdown(metrics, columns), encoding="utf-8")
        if multilabel:
            plot_precision_recall(scores, targets, metrics, plot, ignore)
        else:
            plot_confusion(np.array(metrics["confusion_matrix"]), metrics["classes"], plot,
                           f"mean class recall {metrics['mean_class_recall']:.3f}, accuracy {metrics['accuracy']:.3f}")
    return written


def _figure(width: float, height: float):
    """A matplotlib figure for a file alone: no pyplot, so no display backend is chosen or
    changed (a notebook's stays as it is), and matplotlib loads only when a plot is drawn."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    return figure, figure.subplots()


def _save(figure, path: Path) -> None:
    figure.savefig(path, format="png", dpi=100, bbox_inches="tight")


def plot_confusion(confusion: np.ndarray, classes: list[str], path: Path, subtitle: str) -> None:
    """The confusion matrix with each row divided by its true-class count (so rows read as recall)."""
    support = confusion.sum(axis=1, keepdims=True)
    rates = confusion / np.maximum(support, 1)
    n = len(classes)
    size = max(6.0, min(24.0, 3.0 + 0.35 * n))
    fig, ax = _figure(size, size * 0.9)
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if n <= 40:  # beyond that, names and counts would overlap: the colours still read
        ax.set_xticks(range(n), classes, rotation=90)
        ax.set_yticks(range(n), classes)
        for i in range(n):
            for j in range(n):
                if confusion[i, j]:
                    ax.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"Confusion matrix (rows normalised)\n{subtitle}")
    fig.tight_layout()
    _save(fig, path)


def plot_precision_recall(scores: np.ndarray, targets: np.ndarray, metrics: dict, path: Path,
                          ignore: np.ndarray | None = None) -> None:
    """One precision-recall curve per class with a positive example, best area-AP first in the
    legend; each without the rows that ``ignore`` leaves out of its AP (a difficult image drawn as
    a false positive under an AP that leaves it out)."""
    fig, ax = _figure(8, 7)
    rows = [(k, row) for k, row in enumerate(metrics["per_class"]) if row["ap_area"] is not None]
    rows.sort(key=lambda item: -item[1]["ap_area"])  # legend in order of AP, best first
    for k, row in rows:
        kept = slice(None) if ignore is None else ~ignore[:, k]
        precision, recall = precision_recall(scores[kept, k], targets[kept, k])
        ax.plot(np.concatenate([[0], recall]), np.concatenate([[precision[0]], precision]), linewidth=1.2,
                label=f"{row['class']} (AP {row['ap_area']:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.grid(alpha=0.3)
    ax.set_title(f"Precision-recall per class\nmAP (area) {_mean(metrics['map_area'])}, "
                 f"mAP (VOC2007 11-point) {_mean(metrics['map_voc07_11pt'])}")
    if len(rows) <= 25:
        ax.legend(fontsize=7, loc="lower left", ncol=1 if len(rows) <= 12 else 2)
    fig.tight_layout()
    _save(fig, path)


def _mean(value: float | None) -> str:
    return "undefined (no positive test example)" if value is None else f"{value:.3f}"


def _markdown(metrics: dict, columns: list[str]) -> str:
    lines = [f"# Evaluation ({metrics['task']}, {metrics['examples']} examples)", ""]
    for key in ("accuracy", "mean_class_recall", "map_voc07_11pt", "map_area"):
        if key in metrics:
            lines.append(f"- {key}: {_cell(metrics[key])}")
    lines += ["", "| " + " | ".join(columns) + " |", "|" + "|".join("---" if c == "class" else "---:" for c in columns) + "|"]
    for row in metrics["per_class"]:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    if value is None:
        return "–"
    return f"{value:.4f}" if isinstance(value, float) else str(value).replace("|", "\\|")  # (a class "cats|dogs")
