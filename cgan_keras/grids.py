"""Rendering generated digits as a captioned PNG grid (matplotlib, no display)."""

import math

import numpy as np
from matplotlib.figure import Figure

from cgan_keras.artifacts import atomic_path


def save_grid(path, images, captions, columns=3, title=None):
    """Writes `images` as a grid of captioned tiles to the PNG file `path`.

    The tiles are laid out as one array and drawn as one image with a text
    per caption (about 25 ms; a subplot per tile costs ~8x that, paid every
    100 steps of a run). A bare `Figure` (Agg canvas), never pyplot, so it
    needs no display and leaves no global state behind.

    Args:
        path: destination `.png`; written atomically.
        images: float32 `(N, H, W, C)` (C 1 for grey, 3 for colour) or `(N, H, W)` in [0, 1].
        captions: `N` captions, one per tile (e.g. the digit asked for); `str()` of each is drawn above it.
        columns: tiles per row; rows follow from `N`.
        title: optional line above the grid.
    """
    images = np.asarray(images)
    images = images[..., np.newaxis] if images.ndim == 3 else images
    count, height, width, channels = images.shape
    rows = math.ceil(count / columns)
    gap, band = 2, 10  # pixels between tiles, and of the caption above each tile
    cell_height, cell_width = band + height + gap, width + gap
    canvas = np.ones((rows * cell_height, columns * cell_width, channels), np.float32)  # white
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        top, left = row * cell_height + band, column * cell_width + gap // 2
        canvas[top : top + height, left : left + width] = image
    inches_per_pixel = 0.9 / cell_width
    title_inches = 0.3 if title else 0.0
    figure = Figure(figsize=(canvas.shape[1] * inches_per_pixel, canvas.shape[0] * inches_per_pixel + title_inches))
    axes = figure.add_axes((0, 0, 1, 1 - title_inches / figure.get_figheight()))
    grey = channels == 1
    axes.imshow(canvas[..., 0] if grey else canvas, cmap="gray" if grey else None, vmin=0, vmax=1,
                interpolation="nearest", aspect="auto")  # fmt: skip
    axes.axis("off")
    for index, caption in enumerate(captions):
        row, column = divmod(index, columns)
        axes.text((column + 0.5) * cell_width - 0.5, row * cell_height + band / 2, str(caption),
                  ha="center", va="center", fontsize=7)  # fmt: skip
    if title:
        figure.suptitle(title, fontsize=9, y=1 - 0.5 * title_inches / figure.get_figheight(), va="center")
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)


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
