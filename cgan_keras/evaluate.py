"""Score an exported generator: label accuracy, FID and classifier score, judged by a small MNIST CNN.

Examples:

    python -m cgan_keras.evaluate --model saved_models/cgan/generator
    python -m cgan_keras.evaluate --model saved_models/cgan/generator --data builtin --per-class 200
    python -m cgan_keras.evaluate --model saved_models/cgan/generator --seed 1 --out eval_seed1.json

The first run on a data source trains the judge (on 2 CPU cores, about 15 s on
the 5,000 builtin digits, 2 minutes on full MNIST) and caches it in --judge-dir;
later runs load it. The judge is always trained with seed 0, so figures stay
comparable across models and --seed values. Results are printed and written to
--out as JSON.
User mistakes exit with code 2 and one line on stderr.
"""

import argparse
import functools
import os
import sys
from pathlib import Path

from cgan_keras import cli

PROG = "python -m cgan_keras.evaluate"
fail = functools.partial(cli.fail, PROG)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each flag's default and keeps the examples' line breaks."""


def parse_args(argv):
    parser = cli.make_parser(__doc__, prog=PROG, formatter_class=HelpFormatter)
    parser.add_argument("--model", required=True, default=argparse.SUPPRESS, help="generator SavedModel directory")
    parser.add_argument("--data", default="auto", help="auto, builtin, mnist, PATH.csv or PATH.npz")
    parser.add_argument("--per-class", type=int, default=1000, help="generated digits of each class")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generator's noise")
    parser.add_argument("--judge-dir", default="saved_models/judge", help="cache of trained judges")
    parser.add_argument("--out", help="JSON file for the results; None means eval.json beside the model directory")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.per_class < 1:
        fail(f"--per-class must be a positive integer. Received: --per-class {args.per_class}")
    if not Path(args.model).is_dir():
        fail(f"--model must be a SavedModel directory. Received: --model {args.model}")
    out = Path(args.out or Path(args.model).parent / "eval.json")
    # Imported once the arguments are checked: TensorFlow takes ~5 s to import.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from cgan_keras import data, evaluation, export
    from cgan_keras import judge as judges
    from cgan_keras.sampler import DigitSampler

    try:
        sampler = DigitSampler.from_saved_model(args.model)
        source = data.resolve_source(args.data)
        images, labels = data.load_data(source)
    except (export.SavedModelError, data.DataError) as error:
        fail(str(error))
    print(f"data: {source} ({len(images):,} digits)")
    try:
        judge = judges.load_or_train_judge(
            images, labels, source, directory=args.judge_dir, verbose=1 if sys.stdout.isatty() else 2
        )
    except OSError as error:
        fail(f"cannot write --judge-dir {args.judge_dir}: {error.strerror}")
    print(f"judge: {judge.path} ({judge.accuracy:.2%} on {len(judge.held_out_labels):,} held-out digits)")
    try:
        results = evaluation.evaluate_and_save(
            sampler, judge, out, args.per_class, args.seed, model=str(args.model), data=source
        )
    except OSError as error:
        fail(f"cannot write --out {out}: {error.strerror}")
    print(evaluation.format_table(results))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
