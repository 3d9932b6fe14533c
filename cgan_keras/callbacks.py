"""`SampleGridCallback`: PNG grids of generated digits while a GAN trains."""

from pathlib import Path

import keras
import numpy as np

from cgan_keras import grids


class SampleGridCallback(keras.callbacks.Callback):
    """Writes a grid of generated digits after step 1 and every `every` steps.

    Steps are global training steps (the generator optimizer's `iterations`),
    so numbering continues across epochs and resumed runs, and a multiple of
    `every` crossed inside one `steps_per_execution` call is still written
    (named after the step actually reached). The noise and digits are fixed,
    so successive grids show the same samples improving.

    Args:
        directory: folder that receives `step_000100.png`, ...
        every: steps between grids.
        digits: the digit of each tile, row by row; the default `0..8` fills
            a 3x3 grid.
        columns: tiles per row.
        seed: seed of the fixed noise.

    Example:

    >>> gan.fit(dataset, steps_per_epoch=100, epochs=10,
    ...         callbacks=[SampleGridCallback("run/samples", every=100)])
    """

    def __init__(self, directory, every=100, digits=tuple(range(9)), columns=3, seed=0):
        super().__init__()
        if every < 1:
            raise ValueError(f"`every` must be a positive integer. Received: every={every}")
        self.directory = Path(directory)
        self.every = every
        self.digits = np.asarray(digits, dtype="int32")
        self.columns = columns
        self.seed = seed
        self._last_step = None

    def on_train_begin(self, logs=None):
        self._last_step = int(self.model.optimizer.iterations)

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations)
        crossed_first = self._last_step < 1 <= step
        crossed_multiple = step // self.every > self._last_step // self.every
        self._last_step = step
        if crossed_first or crossed_multiple:
            self.write_grid(step)

    def write_grid(self, step):
        """Renders the fixed samples at the current weights; returns the PNG's path."""
        images = self.model.generate(self.digits, seed=self.seed)
        path = self.directory / f"step_{step:06d}.png"
        grids.save_grid(path, images, self.digits, columns=self.columns, title=f"step {step}")
        return path
