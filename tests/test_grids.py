import numpy as np
from matplotlib import image

from cgan_keras.grids import save_grid


def test_a_grid_keeps_colour_images_in_colour_and_grey_ones_grey(tmp_path):
    tiles = np.zeros((2, 16, 16, 3), "float32")
    tiles[0, ..., 0], tiles[1, ..., 2] = 1.0, 1.0  # red, blue
    save_grid(tmp_path / "colour.png", tiles, ["r", "b"], columns=2)
    pixels = image.imread(tmp_path / "colour.png")
    red_ones = (pixels[..., 0] > 0.9) & (pixels[..., 1] < 0.1) & (pixels[..., 2] < 0.1)
    blue_ones = (pixels[..., 2] > 0.9) & (pixels[..., 0] < 0.1) & (pixels[..., 1] < 0.1)
    assert red_ones.sum() >= 16 * 16 and blue_ones.sum() >= 16 * 16  # channel 0 alone drew the blue tile black
    save_grid(tmp_path / "grey.png", np.full((2, 16, 16, 1), 0.5, "float32"), [1, 2], columns=2)
    grey = image.imread(tmp_path / "grey.png")[..., :3]
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])
