"""The report's matplotlib figures (plain ``Figure`` objects on the Agg canvas, no pyplot state);
:func:`png` turns one into PNG bytes."""
from __future__ import annotations

import io
import math

from matplotlib.figure import Figure

from .runs import Run

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf"]


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def png(fig: Figure, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def _finite(values) -> list[float]:
    return [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def loss_keys(history: list[dict]) -> list[str]:
    """``train_loss`` first, then each loss term (``train_<term>``) in the order logged."""
    keys: list[str] = []
    for record in history:
        for key, value in record.items():
            if (key.startswith("train_") and key != "train_accuracy" and key not in keys
                    and isinstance(value, (int, float))):
                keys.append(key)
    return sorted(keys, key=lambda k: k != "train_loss")


def _series(history, key):
    points = [(r["epoch"], r[key]) for r in history if isinstance(r.get(key), (int, float)) and "epoch" in r]
    return [p[0] for p in points], [p[1] for p in points]


def _pad_limits(ax, span: float) -> None:
    """At least ``span`` units of y range (flat curves otherwise zoom into float noise), no offset."""
    lo, hi = ax.get_ylim()
    if hi - lo < span:
        mid = (hi + lo) / 2
        ax.set_ylim(mid - span / 2, mid + span / 2)
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")


def curves(run: Run) -> Figure:
    """Loss (total and each term) and train/val accuracy per epoch; the best epoch dotted."""
    fig = Figure(figsize=(10, 3.4))
    loss_ax, acc_ax = fig.subplots(1, 2)
    keys = loss_keys(run.history)
    if len(keys) == 2:  # a single term equals the total: draw it once
        keys = keys[:1]
    values = _finite(v for k in keys for v in _series(run.history, k)[1])
    for i, key in enumerate(keys):
        x, y = _series(run.history, key)
        total = key == "train_loss"
        loss_ax.plot(x, y, marker="o" if len(x) < 30 else None, ms=3, lw=2.4 if total else 1.4,
                     color="black" if total else color(i - 1), label="total" if total else key.removeprefix("train_"))
    if values and min(values) > 0 and max(values) / min(values) > 50:
        loss_ax.set_yscale("log")  # weighted terms can differ by orders of magnitude
    loss_ax.set(title="training loss (weighted terms)", xlabel="epoch")
    if loss_ax.get_yscale() == "linear":
        _pad_limits(loss_ax, span=1e-3)
    if keys:
        loss_ax.legend(fontsize=8, frameon=False)
    for key, label, style in (("train_accuracy", "train", "--"), ("val_accuracy", "validation", "-")):
        x, y = _series(run.history, key)
        if x:
            acc_ax.plot(x, [100 * v for v in y], style, marker="o" if len(x) < 30 else None, ms=3, lw=1.8,
                        label=label, color="#555555" if key == "train_accuracy" else "#1f77b4")
    test = run.metrics.get("accuracy")
    if isinstance(test, (int, float)):
        acc_ax.axhline(100 * test, color="#d62728", lw=1, ls=":", label=f"test {100 * test:.1f}%")
    acc_ax.set(title="accuracy (%)", xlabel="epoch")
    _pad_limits(acc_ax, span=4.0)
    acc_ax.legend(fontsize=8, frameon=False)
    if run.best_epoch:
        for ax in (loss_ax, acc_ax):
            ax.axvline(run.best_epoch, color="#999999", lw=0.8, ls=":")
        acc_ax.annotate(f"best epoch {run.best_epoch}", (run.best_epoch, 0.02), xycoords=("data", "axes fraction"),
                        fontsize=7, color="#777777", ha="left", xytext=(3, 0), textcoords="offset points")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return fig


def validation_overlay(runs: list[Run], colors: dict[str, str]) -> Figure:
    """Validation accuracy per epoch of several runs on one axis."""
    fig = Figure(figsize=(10, 2.8))
    ax = fig.subplots()
    for run in runs:
        x, y = _series(run.history, "val_accuracy")
        ax.plot(x, [100 * v for v in y], marker="o" if len(x) < 30 else None, ms=3, lw=1.8, color=colors[run.name],
                label=run.name)
    ax.set(title="validation accuracy (%) per epoch", xlabel="epoch")
    _pad_limits(ax, span=4.0)
    ax.grid(alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    fig.tight_layout()
    return fig


def confusion(run: Run) -> Figure:
    """Row-normalised confusion matrix (true class down, predicted across), counts in the cells."""
    matrix = run.metrics["confusion"]
    k = len(matrix)
    size = min(4.6, 1.6 + 0.18 * k)
    fig = Figure(figsize=(size, size))
    ax = fig.subplots()
    rates = [[c / sum(row) if sum(row) else 0.0 for c in row] for row in matrix]
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    if k <= 12:
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                if count:
                    ax.text(j, i, str(count), ha="center", va="center", fontsize=6.5 if k > 6 else 9,
                            color="white" if rates[i][j] > 0.55 else "#222222")
    ticks = list(range(k)) if k <= 20 else list(range(0, k, max(1, k // 10)))
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.tick_params(labelsize=8)
    accuracy = run.metrics.get("accuracy")
    title = run.name + (f" ({100 * accuracy:.1f}%)" if isinstance(accuracy, (int, float)) else "")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("predicted class", fontsize=9)
    ax.set_ylabel("true class", fontsize=9)
    fig.tight_layout()
    return fig


def grouped_bars(groups: list[str], series: dict[str, list[float | None]], colors: dict[str, str], *,
                 title: str, xlabel: str, rotate: bool = False) -> Figure:
    """Vertical bars: one group per entry of ``groups``, one bar per series (values in [0, 1])."""
    n = max(1, len(series))
    width = 0.8 / n
    fig = Figure(figsize=(max(6.0, min(12.0, 0.45 * len(groups) * n + 2)), 3.4))
    ax = fig.subplots()
    for s, (name, values) in enumerate(series.items()):
        xs = [g + (s - (n - 1) / 2) * width for g in range(len(groups))]
        heights = [100 * v if isinstance(v, (int, float)) else 0.0 for v in values]
        bars = ax.bar(xs, heights, width * 0.92, color=colors.get(name, color(s)), label=name)
        if len(groups) * n <= 16:
            ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=30 if rotate else 0, ha="right" if rotate else "center", fontsize=8)
    ax.set(title=title, xlabel=xlabel, ylim=(0, 108))
    ax.set_ylabel("accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=8, frameon=False, ncols=min(n, 4), loc="upper center",
              bbox_to_anchor=(0.5, -0.3 if rotate else -0.18))
    fig.tight_layout()
    return fig
