"""Training curves as a PNG: losses on the left, dev BLEU-4 and CIDEr on the right."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from capcli.atomic import replacing


def plot_history(history: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Draw per-epoch ``train_loss``/``dev_loss`` and ``dev_BLEU-4``/``dev_CIDEr``; atomic write.

    A self-critical run has ``train_reward`` (the samples' CIDEr-D) instead of
    ``train_loss``: it goes with the scores.
    """
    # The object API with an Agg canvas: no pyplot, no global backend switch, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    losses, scores = fig.subplots(1, 2)
    present = history[0].keys() if history else ()
    for key, label in (("train_loss", "train"), ("dev_loss", "dev")):
        if key in present:
            losses.plot(epochs, [h[key] for h in history], marker="o", label=label)
    losses.set(xlabel="epoch", ylabel="cross-entropy per word", title="loss")
    for key, label in (("dev_BLEU-4", "BLEU-4"), ("dev_CIDEr", "CIDEr"), ("train_reward", "train samples' CIDEr-D")):
        if key in present:
            scores.plot(epochs, [h[key] for h in history], marker="o", label=label)
    best = max(history, key=lambda h: h["dev_CIDEr"], default=None)
    if best is not None:
        scores.axvline(best["epoch"], color="grey", linestyle=":", label=f"best (epoch {best['epoch']})")
    scores.set(xlabel="epoch", ylabel="score", title="dev metrics")
    for ax in (losses, scores):
        ax.grid(alpha=0.3)
        ax.legend()
        if epochs:
            ax.set_xticks(epochs if len(epochs) <= 20 else epochs[:: max(1, len(epochs) // 10)])
    if title:
        fig.suptitle(title)
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
