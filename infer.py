"""Generate digits with an exported generator: a TensorFlow SavedModel or an ONNX file.

Examples:

    python infer.py --model saved_models/cgan/generator --digit 9
    python infer.py --model saved_models/cgan/generator.onnx --digit all --out all.png
    python infer.py --digit 7 --count 25 --seed 3 --npy sevens.npy
    python infer.py --digit all --truncation 0.7 --out typical.png
    python infer.py --interpolate 3 8 --frames 10 --out morph.png

A `--model` ending in `.onnx` runs on onnxruntime and never imports TensorFlow
(about a second as a whole process); a directory is loaded with
`tf.saved_model.load`. Neither rebuilds a Keras model or runs code from the
model's files. The same `--seed` gives the same images from both.
`--truncation T` draws the noise from a normal truncated at +-T: fewer odd
digits, less variety. `--interpolate A B` morphs digit A into digit B: each
row keeps one noise vector while the condition moves from A's one-hot to B's
in `--frames` steps. User mistakes exit with code 2 and one line on stderr.
"""

import contextlib
import functools
import math
import os
from pathlib import Path

import numpy as np

# Before the package's import: it would import TensorFlow (~5 s) to register its Keras classes, and this
# tool checks its arguments first (infer.py runs ONNX models without TensorFlow at all).
os.environ.setdefault("CGAN_KERAS_DEFER_TENSORFLOW", "1")

from cgan_keras import cli
from cgan_keras.artifacts import atomic_path, first_line
from cgan_keras.grids import save_grid
from cgan_keras.sampler import MIN_TRUNCATION, DigitSampler, OnnxModelError

fail = functools.partial(cli.fail, "infer.py")
NUM_CLASSES = 10  # `models.NUM_CLASSES`, which imports Keras: --digit is checked before anything loads
MAX_TILES = 100


def parse_args(argv):
    parser = cli.make_parser(__doc__)
    parser.add_argument(
        "--model",
        default="saved_models/cgan/generator",
        help="SavedModel directory, or a .onnx file (default: %(default)s)",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--digit", help="a digit 0-9, or `all` for one row per digit")
    what.add_argument("--interpolate", nargs=2, metavar=("A", "B"), help="morph digit A into digit B")
    parser.add_argument("--frames", type=int, help="with --interpolate: images from A to B, at least 2 (default: 10)")
    parser.add_argument(
        "--count", type=int, help="images per digit (default: 9, or 10 with --digit all); rows with --interpolate (4)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise (default: %(default)s)")
    parser.add_argument("--truncation", type=float, help="draw the noise from a normal truncated at +-T, T >= 0.01")
    parser.add_argument("--out", help="PNG grid to write (default: digit_<DIGIT>.png or morph_<A>_<B>.png)")
    parser.add_argument("--npy", help="also save every image as float32 (N, 28, 28, 1) in [0, 1] to this .npy")
    args = parser.parse_args(argv)
    if args.interpolate:
        if not all(_is_digit(value) for value in args.interpolate):
            parser.error(
                "--interpolate must be two digits 0-9. Received: --interpolate {} {}".format(*args.interpolate)
            )
        args.interpolate = [int(value) for value in args.interpolate]
        args.frames = 10 if args.frames is None else args.frames
        if args.frames < 2:
            parser.error(f"--frames must be an integer >= 2. Received: --frames {args.frames}")
        args.out = Path(args.out or "morph_{}_{}.png".format(*args.interpolate))
    else:
        if args.frames is not None:
            parser.error("--frames goes with --interpolate A B")
        if not (args.digit == "all" or _is_digit(args.digit)):
            parser.error(f"--digit must be 0-9 or `all`. Received: --digit {args.digit}")
        args.digits = np.arange(NUM_CLASSES, dtype=np.int32) if args.digit == "all" else np.int32([int(args.digit)])
        args.out = Path(args.out or f"digit_{args.digit}.png")
    if args.count is None:
        args.count = 4 if args.interpolate else NUM_CLASSES if args.digit == "all" else 9
    if args.count < 1:
        parser.error(f"--count must be a positive integer. Received: --count {args.count}")
    if args.truncation is not None and not args.truncation >= MIN_TRUNCATION:  # `not >=` also catches nan
        parser.error(f"--truncation must be a number >= {MIN_TRUNCATION}. Received: --truncation {args.truncation}")
    if args.seed < 0:
        parser.error(f"--seed must be a non-negative integer. Received: --seed {args.seed}")
    if args.out.suffix.lower() != ".png":
        parser.error(f"--out must be a .png file. Received: --out {args.out}")
    # Both destinations are checked before anything is written, so a failed command leaves no file behind.
    for flag, path in (("--out", args.out), ("--npy", args.npy)):
        directory = Path(path).parent if path else None
        if directory is not None and not (directory.is_dir() and os.access(directory, os.W_OK)):
            parser.error(f"{flag} {path}: cannot write to the directory {directory}")
        if path and Path(path).is_dir():
            parser.error(f"{flag} {path} is a directory; expected a file name")
    if args.npy and Path(args.npy).resolve() == args.out.resolve():
        parser.error(f"--npy and --out must be two files. Received: both {args.out}")
    return args


def _is_digit(text):
    return text in {str(digit) for digit in range(NUM_CLASSES)}


def load_sampler(path):
    """Loads `--model` as a `DigitSampler`: an ONNX file with onnxruntime, a SavedModel with TensorFlow."""
    if Path(path).suffix == ".onnx":
        try:
            return DigitSampler.from_onnx(path)
        except OnnxModelError as error:
            fail(f"--model {path} is not a generator ONNX file: {error}")
    if not Path(path).is_dir():
        fail(f"--model {path} is not a directory; expected a SavedModel or a .onnx file exported by train.py")
    # Imported once the arguments are checked, and only for a SavedModel:
    # TensorFlow takes ~5 s to import.
    cli.import_tensorflow("infer.py")  # quietly: TensorFlow's start-up lines are filtered
    from cgan_keras import export

    try:
        return DigitSampler.from_saved_model(path)
    except export.SavedModelError as error:
        fail(f"--model {path} is not a generator SavedModel: {error}")


def generate_all(sampler, digits, seed, shown, npy_path=None, truncation=None):
    """Generates every digit, streaming them to `npy_path` if given; returns the `shown` ones.

    Args:
        sampler: a `DigitSampler`.
        digits: int32 `(N,)`.
        seed: seed of the noise.
        shown: bool `(N,)`, which images to keep in memory for the grid.
        npy_path: optional `.npy` that receives all N images, written atomically.
        truncation: None, or the truncation of the noise (>= `MIN_TRUNCATION`).
    """
    tiles = []
    with contextlib.ExitStack() as stack:
        array = None
        if npy_path:
            temporary = stack.enter_context(atomic_path(npy_path))
            shape = (len(digits), *sampler.image_shape)
            array = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.float32, shape=shape)
        for start, images in sampler.batches(digits, seed, truncation):
            if array is not None:
                array[start : start + len(images)] = images
            tiles.append(images[shown[start : start + len(images)]])
        if array is not None:
            array.flush()
    return np.concatenate(tiles)


def interpolate(sampler, args):
    """Writes the morph grid of `--interpolate A B` (one row per noise vector) and, if asked, the `.npy`."""
    start, end = args.interpolate
    try:
        frames = sampler.interpolate(start, end, args.frames, args.count, args.seed, args.truncation)
    except ValueError as error:  # an old export without the condition input
        fail(f"--model {args.model}: {error}")
    weights = np.tile(np.linspace(0.0, 1.0, args.frames), args.count)
    captions = [f"{end}: {weight:.0%}" if 0 < weight < 1 else str(end if weight else start) for weight in weights]
    images = frames.reshape(-1, *sampler.image_shape)
    try:
        save_grid(args.out, images, captions, columns=args.frames, title=f"{start} -> {end}")
        if args.npy:
            with atomic_path(args.npy) as temporary, open(temporary, "wb") as file:
                np.save(file, images)  # a file object: given a path, np.save would append `.npy` to the temporary name
    except OSError as error:
        fail(f"cannot write {error.filename}: {error.strerror}")
    print(f"wrote {args.out} ({args.count} rows of {args.frames} frames)" + (f" and {args.npy}" if args.npy else ""))


def draw_digits(sampler, args):
    """Writes the grid of `--digit` (the first 100 images, or `--count` of each digit) and, if asked, the `.npy`."""
    digits = np.repeat(args.digits, args.count)
    shown = np.zeros(len(digits), dtype=bool)
    if args.digit == "all":
        columns = min(args.count, NUM_CLASSES)
        shown.reshape(NUM_CLASSES, args.count)[:, :columns] = True
    else:
        shown[:MAX_TILES] = True
        columns = math.ceil(math.sqrt(shown.sum()))
    try:
        tiles = generate_all(sampler, digits, args.seed, shown, args.npy, args.truncation)
        save_grid(args.out, tiles, digits[shown], columns=columns)
    except OSError as error:
        fail(f"cannot write {error.filename}: {error.strerror}")
    print(f"wrote {args.out} ({shown.sum()} of {len(digits)} digits shown)" + (f" and {args.npy}" if args.npy else ""))


def main(argv=None):
    args = parse_args(argv)
    sampler = load_sampler(args.model)
    try:
        (interpolate if args.interpolate else draw_digits)(sampler, args)
    except MemoryError as error:
        asked = f"--count {args.count}" + (f" with --frames {args.frames}" if args.interpolate else "")
        fail(f"{asked} is more than this machine holds: {first_line(error)}")


if __name__ == "__main__":
    main()
