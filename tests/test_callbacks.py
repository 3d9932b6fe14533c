import numpy as np
from conftest import tiny_gan
from PIL import Image

from cgan_keras.callbacks import SampleGridCallback


def test_grids_are_written_after_step_one_and_every_hundred_global_steps(tmp_path, digits):
    gan = tiny_gan()
    callback = SampleGridCallback(tmp_path, every=100)
    # 3 epochs of 70 steps: multiples of 100 fall inside epochs, which must not matter.
    gan.fit(*digits, batch_size=16, steps_per_epoch=70, epochs=3, callbacks=[callback], verbose=0)
    assert sorted(path.name for path in tmp_path.glob("*.png")) == [
        "step_000001.png",
        "step_000100.png",
        "step_000200.png",
    ]
    with Image.open(tmp_path / "step_000100.png") as png:
        assert png.format == "PNG" and png.width > 100 and png.height > 100
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_steps_per_execution_does_not_skip_a_multiple(tmp_path, digits):
    gan = tiny_gan(steps_per_execution=3)
    callback = SampleGridCallback(tmp_path, every=5)
    gan.fit(*digits, batch_size=16, steps_per_epoch=12, epochs=1, callbacks=[callback], verbose=0)
    # Callbacks run after steps 3, 6, 9 and 12: step 1 is passed at 3, step 5 at 6, step 10 at 12.
    assert sorted(path.name for path in tmp_path.glob("*.png")) == [
        "step_000003.png",
        "step_000006.png",
        "step_000012.png",
    ]


def test_the_grid_shows_the_same_fixed_samples_each_time(tmp_path):
    gan = tiny_gan()
    callback = SampleGridCallback(tmp_path, every=1)
    callback.set_model(gan)
    first = np.asarray(Image.open(callback.write_grid(1)))
    second = np.asarray(Image.open(callback.write_grid(2)))
    caption_free = slice(40, None)  # the title row holds the step number
    np.testing.assert_array_equal(first[caption_free], second[caption_free])
