"""The report's figures: matplotlib (Agg, no pyplot state) drawn from numbers handed in, returned as PNG bytes.

These functions only draw: every value comes from the caller, which read it from
a run's metrics files (see `rlhfkit.demo.report`). One colour per policy
across every figure and the HTML tables (`color_of`).
"""

from __future__ import annotations

import io
import math
from typing import Sequence

import numpy as np

from rlhfkit.evaluation.metrics import overoptimization_curve

Series = tuple[Sequence[float], Sequence[float]]  # (x, y)

PALETTE = {"base": "#8c8c8c", "pretrain": "#8c8c8c", "sft": "#3b6fb6", "ppo": "#e07b24", "ppo_beta0": "#c8374b",
           "dpo": "#2e9a5d", "rloo": "#7b5ea7", "grpo": "#a0673c", "rm": "#3f8f9e"}
_CYCLE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#ccb974")
INK, GRID = "#222831", "#e6e8eb"


def color_of(name: str) -> str:
    """A stable colour per policy/stage name; "ppo eval" takes the colour of "ppo"."""
    key = name.split(" ")[0]
    if key in PALETTE:
        return PALETTE[key]
    return _CYCLE[sum(map(ord, key)) % len(_CYCLE)]


def _figure(nrows: int, ncols: int, width: float, height: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes:
        ax.set_facecolor("white")
        ax.grid(True, color=GRID, linewidth=0.8)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        for side in ("left", "bottom"):
            ax.spines[side].set_color("#9aa0a6")
        ax.tick_params(colors="#4a4f55", labelsize=8.5)
    return fig, axes


def to_png(fig, dpi: int = 110) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    return buf.getvalue()


def _title(ax, text: str) -> None:
    ax.set_title(text, fontsize=10.5, color=INK, loc="left", fontweight="bold")


def _smooth(y: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average (window shrinks at the ends), for display only: no lag, unlike an EMA."""
    kernel = np.ones(width)
    return np.convolve(y, kernel, "same") / np.convolve(np.ones_like(y), kernel, "same")


def curves_png(panels: Sequence[tuple[str, dict[str, Series]]], ncols: int = 2, xlabel: str = "step") -> bytes:
    """Small multiples of training curves: panels of (title, {series name: (steps, values)}).

    A series named "<stage> eval" is dashed with markers (sparse held-out points);
    long noisy series are drawn faint with a bold moving average on top.
    """
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = _figure(nrows, ncols, 4.6 * ncols, 2.9 * nrows)
    for ax, (title, series) in zip(axes, panels):
        for name, (x, y) in series.items():
            x, y, c = np.asarray(x, float), np.asarray(y, float), color_of(name)
            if name.endswith(" eval"):
                ax.plot(x, y, "--o", color=c, lw=1.6, ms=3.5, label=name)
            elif len(y) > 25:
                ax.plot(x, y, color=c, lw=0.8, alpha=0.3)
                ax.plot(x, _smooth(y, max(3, len(y) // 20)), color=c, lw=2.0, label=name)
            else:
                ax.plot(x, y, "-o", color=c, lw=2.0, ms=3, label=name)
        _title(ax, title)
        ax.set_xlabel(xlabel, fontsize=8.5, color="#4a4f55")
        if series:
            ax.legend(fontsize=8, frameon=False)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    return to_png(fig)


def winrate_png(rows: Sequence[tuple[str, dict | None, dict | None]], baseline: str) -> bytes:
    """Forest plot: per policy, win-rate vs the baseline by gold (●) and by RM (◆) with 95% CIs."""
    fig, (ax,) = _figure(1, 1, 7.2, 0.55 * len(rows) + 1.2)
    for i, (name, gold, rm) in enumerate(rows):
        y = len(rows) - 1 - i
        for ci, dy, marker, label in ((gold, 0.12, "o", "gold"), (rm, -0.12, "D", "reward model")):
            if ci is None:
                continue
            face = color_of(name) if label == "gold" else "white"
            ax.errorbar(ci["mean"], y + dy, xerr=[[ci["mean"] - ci["lo"]], [ci["hi"] - ci["mean"]]], fmt=marker,
                        color=color_of(name), mfc=face, ms=7, capsize=3, lw=1.6, label=label if i == 0 else None)
    ax.axvline(0.5, color="#6b7075", lw=1, ls=":")
    ax.set_yticks(range(len(rows)), [r[0] for r in reversed(rows)], fontsize=9.5)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlabel(f"win-rate vs {baseline}  (ties count ½; 0.5 = no better, no worse)", fontsize=8.5)
    _title(ax, f"Who beats {baseline}?  ● by gold   ◆ by reward model")
    return to_png(fig)


def overopt_png(points: dict[str, list[tuple[float, float, float | None]]],
                fit: tuple[float, float, float] | None) -> bytes:
    """Gold (left) and RM score (right) against √KL for each RL run, with the Gao et al. fit on gold.

    points: run -> [(kl, gold, rm_score or None)]; fit: (alpha, beta, gold0) or None.
    """
    fig, (ax_g, ax_r) = _figure(1, 2, 10, 3.6)
    d_max = 0.0
    for run, pts in points.items():
        pts = sorted(pts)
        d = np.sqrt(np.clip([p[0] for p in pts], 0, None))
        d_max = max(d_max, float(d.max(initial=0)))
        ax_g.plot(d, [p[1] for p in pts], "-o", color=color_of(run), lw=1.4, ms=5, alpha=0.9, label=run)
        rm = [(x, p[2]) for x, p in zip(d, pts) if p[2] is not None]
        if rm:
            ax_r.plot(*zip(*rm), "-D", color=color_of(run), lw=1.4, ms=4.5, alpha=0.9, label=run)
    if fit is not None:
        alpha, beta, gold0 = fit
        d = np.linspace(0, max(d_max, 1e-6) * 1.08, 200)
        ax_g.plot(d, overoptimization_curve(d, alpha, beta, gold0), color=INK, lw=1.6, ls="--",
                  label=f"fit: d(α−βd), α={alpha:.3f}, β={beta:.3f}")
        if beta > 0 and 0 < alpha / (2 * beta) < d_max * 1.08:
            ax_g.axvline(alpha / (2 * beta), color=INK, lw=0.8, ls=":")
    _title(ax_g, "True quality (gold) vs distance from SFT")
    _title(ax_r, "Proxy (reward-model score) vs distance from SFT")
    for ax, label in ((ax_g, "mean gold (held-out, greedy)"), (ax_r, "mean RM score")):
        ax.set_xlabel("√KL(π ‖ π_SFT)   (√nats)", fontsize=8.5)
        ax.set_ylabel(label, fontsize=8.5)
        ax.legend(fontsize=8, frameon=False)
    return to_png(fig)


def bars_png(panels: Sequence[tuple[str, dict[str, float | None]]]) -> bytes:
    """One small bar chart per metric, one bar per policy (value printed on the bar)."""
    fig, axes = _figure(1, len(panels), 2.6 * len(panels), 2.9)
    for ax, (title, values) in zip(axes, panels):
        names = [n for n, v in values.items() if v is not None and not math.isnan(v)]
        vals = [values[n] for n in names]
        bars = ax.bar(range(len(names)), vals, color=[color_of(n) for n in names], width=0.65)
        ax.bar_label(bars, [f"{v:.2f}" for v in vals], fontsize=8, padding=2)
        ax.set_xticks(range(len(names)), names, fontsize=8, rotation=20)
        ax.margins(y=0.18)
        ax.axhline(0, color="#9aa0a6", lw=0.8)
        _title(ax, title)
    return to_png(fig)


def calibration_png(bins: Sequence[dict]) -> bytes:
    """Reward-model calibration: predicted P(first preferred) vs observed frequency, dot area ∝ pairs."""
    fig, (ax,) = _figure(1, 1, 4.2, 3.6)
    ax.plot([0, 1], [0, 1], color="#9aa0a6", lw=1, ls="--")
    n = np.array([b["n"] for b in bins], float)
    ax.scatter([b["predicted"] for b in bins], [b["observed"] for b in bins], s=20 + 180 * n / max(n.max(), 1),
               color=color_of("rm"), alpha=0.8, edgecolor="white")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted P(first preferred)", fontsize=8.5)
    ax.set_ylabel("observed frequency", fontsize=8.5)
    _title(ax, "Reward-model calibration (held-out pairs)")
    return to_png(fig)
