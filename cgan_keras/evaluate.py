"""Score an exported generator with the fixed judge: label accuracy, FID, intra-class FID, precision/recall.

Examples:

    python -m cgan_keras.evaluate --model saved_models/cgan/generator
    python -m cgan_keras.evaluate --model saved_models/cgan/generator --per-class 200
    python -m cgan_keras.evaluate --model saved_models/cgan/generator --seed 1 --out eval_seed1.json
    python -m cgan_keras.evaluate --model saved_models/cgan/generator --truncation 0.7 --out eval_t07.json

Every generator, whatever data it was trained on, is scored by the same judge
against the same 5,000 held-out real MNIST digits (see cgan_keras/metrics/judge.py),
and each score is printed beside its real-vs-real floor. Results are printed
and written to --out as JSON.
User mistakes exit with code 2 and one line on stderr.
"""

import argparse
import functools
import os
from pathlib import Path

from cgan_keras import cli
from cgan_keras.artifacts import first_line
from cgan_keras.sampler import MIN_TRUNCATION

PROG = "python -m cgan_keras.evaluate"
fail = functools.partial(cli.fail, PROG)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each flag's default and keeps the examples' line breaks."""


def parse_args(argv):
    parser = cli.make_parser(__doc__, prog=PROG, formatter_class=HelpFormatter)
    parser.add_argument("--model", required=True, default=argparse.SUPPRESS, help="generator SavedModel directory")
    parser.add_argument("--per-class", type=int, default=1000, help="generated digits of each class")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generator's noise")
    parser.add_argument("--truncation", type=float, help="noise from a normal truncated at +-T (T >= 0.01); None: none")
    parser.add_argument("--out", help="JSON file for the results; None means eval.json beside the model directory")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.per_class < 1:
        fail(f"--per-class must be a positive integer. Received: --per-class {args.per_class}")
    if args.truncation is not None and not args.truncation >= MIN_TRUNCATION:  # `not >=` also catches nan
        fail(f"--truncation must be a number >= {MIN_TRUNCATION}. Received: --truncation {args.truncation}")
    if args.seed < 0:
        fail(f"--seed must be a non-negative integer. Received: --seed {args.seed}")
    if not Path(args.model).is_dir():
        fail(f"--model must be a SavedModel directory. Received: --model {args.model}")
    out = Path(args.out or Path(args.model).parent / "eval.json")
    # Checked before the evaluation, which takes minutes: a bad --out would lose its figures.
    # Missing directories are made when it is written, so the nearest existing one must take them.
    existing = next(folder for folder in out.absolute().parents if folder.exists())
    if out.is_dir() or not (existing.is_dir() and os.access(existing, os.W_OK)):
        fail(f"cannot write --out {out}: expected a file in a writable directory")
    # Imported once the arguments are checked: TensorFlow takes ~5 s to import.
    cli.import_tensorflow(PROG)  # quietly: TensorFlow's start-up lines are filtered
    from cgan_keras import export
    from cgan_keras.metrics import judge as judges
    from cgan_keras.metrics import report
    from cgan_keras.sampler import DigitSampler

    try:
        sampler = DigitSampler.from_saved_model(args.model)
    except export.SavedModelError as error:
        fail(str(error))
    judge = judges.load_judge()
    print(f"judge: the fixed MNIST judge ({judge.accuracy:.2%} on {judge.info['held_out']:,} held-out digits)")
    try:
        results = report.evaluate_and_save(
            sampler, judge, out, args.per_class, args.seed, args.truncation, model=str(args.model)
        )
    except OSError as error:
        fail(f"cannot write --out {out}: {error.strerror}")
    except MemoryError as error:
        fail(f"--per-class {args.per_class} is more than this machine holds: {first_line(error)}")
    print(report.format_table(results))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
