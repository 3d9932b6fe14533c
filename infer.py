"""Generate digits with an exported generator (a TensorFlow SavedModel).

Examples:

    python infer.py --model saved_models/cgan/generator --digit 9
    python infer.py --model saved_models/cgan/generator --digit all --out all.png
    python infer.py --digit 7 --count 25 --seed 3 --npy sevens.npy

The SavedModel is loaded with `tf.saved_model.load`: no Keras model is
rebuilt and no code from the model's directory runs. The same `--seed` gives
the same images. User mistakes exit with code 2 and one line on stderr.
"""

import contextlib
import functools
import math
import os
from pathlib import Path

import numpy as np

from cgan_keras import cli
from cgan_keras.artifacts import atomic_path
from cgan_keras.grids import save_grid

fail = functools.partial(cli.fail, "infer.py")
NUM_CLASSES = 10
MAX_TILES = 100
BATCH_SIZE = 1024


def parse_args(argv):
    parser = cli.make_parser(__doc__)
    parser.add_argument(
        "--model", default="saved_models/cgan/generator", help="SavedModel directory (default: %(default)s)"
    )
    parser.add_argument("--digit", required=True, help="a digit 0-9, or `all` for one row per digit")
    parser.add_argument("--count", type=int, help="images per digit (default: 9, or 10 with --digit all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise (default: %(default)s)")
    parser.add_argument("--out", help="PNG grid to write (default: digit_<DIGIT>.png)")
    parser.add_argument("--npy", help="also save every image as float32 (N, 28, 28, 1) in [0, 1] to this .npy")
    args = parser.parse_args(argv)
    if args.digit == "all":
        args.digits = np.arange(NUM_CLASSES, dtype=np.int32)
    elif args.digit.isdigit() and int(args.digit) < NUM_CLASSES:
        args.digits = np.array([int(args.digit)], dtype=np.int32)
    else:
        parser.error(f"--digit must be 0-9 or `all`. Received: --digit {args.digit}")
    if args.count is None:
        args.count = NUM_CLASSES if args.digit == "all" else 9
    if args.count < 1:
        parser.error(f"--count must be a positive integer. Received: --count {args.count}")
    args.out = Path(args.out or f"digit_{args.digit}.png")
    return args


def load_generator(path):
    """Loads the SavedModel's `serving_default`; returns `(signature, latent_dim)`."""
    if not Path(path).is_dir():
        fail(f"--model {path} is not a directory; expected a SavedModel exported by train.py")
    # Imported once the arguments are checked: TensorFlow takes ~5 s to import.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from cgan_keras import export

    try:
        return export.load_generator(path)
    except export.SavedModelError as error:
        fail(f"--model {path} is not a generator SavedModel: {error}")


def generate(signature, latent_dim, digits, seed):
    """Yields `(start, images)`: float32 `(n, H, W, C)` in [0, 1] for `digits[start:start + n]`.

    Noise is drawn batch by batch from one seeded stream, so memory stays bounded
    for any count and the images depend only on `seed` and `digits`.
    """
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    for start in range(0, len(digits), BATCH_SIZE):
        batch = digits[start : start + BATCH_SIZE]
        noise = rng.standard_normal((len(batch), latent_dim), dtype=np.float32)
        yield start, signature(digit=tf.constant(batch), noise=tf.constant(noise))["images"].numpy()


def generate_all(signature, latent_dim, digits, seed, shown, npy_path=None):
    """Generates every digit, streaming them to `npy_path` if given; returns the `shown` ones.

    Args:
        shown: bool `(N,)`, which images to keep in memory for the grid.
        npy_path: optional `.npy` that receives all N images, written atomically.
    """
    tiles = []
    with contextlib.ExitStack() as stack:
        array = None
        if npy_path:
            temporary = stack.enter_context(atomic_path(npy_path))
            image_shape = tuple(signature.structured_outputs["images"].shape[1:])
            array = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.float32, shape=(len(digits), *image_shape))
        for start, images in generate(signature, latent_dim, digits, seed):
            if array is not None:
                array[start : start + len(images)] = images
            tiles.append(images[shown[start : start + len(images)]])
        if array is not None:
            array.flush()
    return np.concatenate(tiles)


def main(argv=None):
    args = parse_args(argv)
    signature, latent_dim = load_generator(args.model)
    digits = np.repeat(args.digits, args.count)
    shown = np.zeros(len(digits), dtype=bool)
    if args.digit == "all":
        columns = min(args.count, NUM_CLASSES)
        shown.reshape(NUM_CLASSES, args.count)[:, :columns] = True
    else:
        shown[:MAX_TILES] = True
        columns = math.ceil(math.sqrt(shown.sum()))
    try:
        tiles = generate_all(signature, latent_dim, digits, args.seed, shown, args.npy)
        save_grid(args.out, tiles, digits[shown], columns=columns)
    except OSError as error:
        fail(f"cannot write {error.filename}: {error.strerror}")
    print(f"wrote {args.out} ({shown.sum()} of {len(digits)} digits shown)" + (f" and {args.npy}" if args.npy else ""))


if __name__ == "__main__":
    main()
