"""Training pictures: loss/accuracy curves and the confusion matrix (matplotlib, no display needed).

Each is written exactly at the path given (no suffix: PNG), in any format the project's pictures are written in
(:func:`~cnnapps.datasets.io.write_image`, so the suffixes ``free_picture`` accepts), all at once and never through a
symlink. ``overwrite=False`` refuses a file already there (:class:`~cnnapps.files.OutputExistsError`): for a path
the user chose. The default replaces it, as a resumed training run draws its own pictures again."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, overwrite: bool = False, dpi: int = 110) -> Path:
    """Write a matplotlib figure at ``path`` as :func:`~cnnapps.datasets.io.write_image` writes pictures, and close
    it. matplotlib would add ``.png`` to a name without a suffix (another file than the one asked for, possibly one
    the user has) and knows fewer formats than OpenCV: the figure is drawn to PNG bytes, then written from those."""
    import io

    from cnnapps.datasets.io import decode_bytes, write_image

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi)
    finally:
        pyplot().close(fig)
    return write_image(path, decode_bytes(buffer.getvalue(), max_pixels=None, max_aspect=None), overwrite=overwrite)


def plot_curves(
    history: list[dict[str, float]],
    path: str | Path,
    metrics: tuple[str, ...] = ("val_top1", "val_top5"),
    overwrite: bool = True,
) -> None:
    """Loss (train and val) and validation quality (``metrics``) per epoch, side by side."""
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    if all("val_loss" in h for h in history):
        ax_loss.plot(epochs, [h["val_loss"] for h in history], "o-", label="val")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.legend()
    for name in metrics:
        values = [float("nan") if h.get(name) is None else h[name] for h in history]
        ax_acc.plot(epochs, values, "o-", label=name.replace("_", " "))
    ax_acc.set(xlabel="epoch", ylabel="score", title="validation", ylim=(0, 1.02))
    ax_acc.legend()
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no tick at 1.25
    fig.tight_layout()
    save_figure(fig, path, overwrite)


def plot_confusion(
    confusion: list[list[int]], class_names: list[str], path: str | Path, overwrite: bool = True
) -> None:
    """Row-normalised confusion matrix with counts; rows are true classes."""
    import numpy as np

    plt = pyplot()
    counts = np.asarray(confusion, dtype=float)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(class_names)
    size = min(4 + 0.45 * n, 20)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=90 if n > 10 else 45, ha="right" if n <= 10 else "center")
    ax.set_yticks(range(n), class_names)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    colour = "white" if rates[i, j] > 0.5 else "black"
                    ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=8, color=colour)
    fig.tight_layout()
    save_figure(fig, path, overwrite)
