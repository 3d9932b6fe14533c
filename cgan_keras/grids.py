"""Rendering generated digits as a captioned PNG grid (matplotlib, no display)."""

import math

import numpy as np
from matplotlib.figure import Figure

from cgan_keras.artifacts import atomic_path


def save_grid(path, images, digits, columns=3, title=None):
    """Writes `images` as a grid of captioned tiles to the PNG file `path`.

    Uses a bare `Figure` (Agg canvas), never pyplot, so it needs no display
    and leaves no global state behind.

    Args:
        path: destination `.png`; written atomically.
        images: float32 `(N, H, W, 1)` or `(N, H, W)` in [0, 1].
        digits: int `(N,)`, the digit asked for in each tile (its caption).
        columns: tiles per row; rows follow from `N`.
        title: optional line above the grid.
    """
    images = np.asarray(images)
    rows = math.ceil(len(images) / columns)
    figure = Figure(figsize=(columns * 0.9, rows * 1.0 + (0.3 if title else 0.0)), dpi=100)
    if title:
        figure.suptitle(title, fontsize=9)
    for index, axes in enumerate(figure.subplots(rows, columns, squeeze=False).flat):
        axes.axis("off")
        if index < len(images):
            axes.imshow(images[index].squeeze(-1) if images.ndim == 4 else images[index], cmap="gray", vmin=0, vmax=1)
            axes.set_title(str(int(digits[index])), fontsize=8, pad=2)
    figure.tight_layout(pad=0.3)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")


def tile(images, columns):
    """Tiles images into one mosaic.

    Args:
        images: float32 `(N, H, W, C)` in [0, 1].
        columns: tiles per row; missing tiles at the end are black.

    Returns:
        float32 `(rows * H, columns * W, C)`.
    """
    count, height, width, channels = images.shape
    rows = math.ceil(count / columns)
    padded = np.zeros((rows * columns, height, width, channels), images.dtype)
    padded[:count] = images
    return (
        padded.reshape(rows, columns, height, width, channels)
        .swapaxes(1, 2)
        .reshape(rows * height, columns * width, channels)
    )
