"""Train the fixed judge on MNIST's training digits and write it into the package.

Examples:

    python -m cgan_keras.metrics.train_judge --data ../shared/mnist/mnist_train.npz
    python -m cgan_keras.metrics.train_judge --data mnist --out /tmp/judge

A seeded 10,000 of the digits are held out; the judge trains on the rest
(Adam, cosine-decayed learning rate, batch 128) and is scored on them. The
judge's features of the held-out digits, split class by class into halves A and
B, are saved beside it as the reference of every score (see `judge.py`).
The shipped judge was made by the first example; on 2 CPU cores it takes
about 5 minutes. User mistakes exit with code 2 and one line on stderr.
"""

import argparse
import functools
import hashlib
import math
import time
from pathlib import Path

from cgan_keras import cli

PROG = "python -m cgan_keras.metrics.train_judge"
HELD_OUT = 10_000
fail = functools.partial(cli.fail, PROG)


def parse_args(argv):
    formatter = type("Formatter", (argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter), {})
    parser = cli.make_parser(__doc__, prog=PROG, formatter_class=formatter)
    parser.add_argument("--data", required=True, help="mnist, PATH.npz or PATH.csv with at least 20,000 digits")
    parser.add_argument("--epochs", type=int, default=12, help="passes over the training digits")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out split and of training")
    parser.add_argument("--out", default=None, help="directory for judge.weights.h5, reference.npz, judge.json "
                        "(default: the package's judge_files/)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be a positive integer. Received: --epochs {args.epochs}")
    return args


def train_judge(images, labels, epochs=12, seed=0, verbose=2):
    """Trains a judge on all but a seeded `HELD_OUT` of the digits.

    Args:
        images: float32 `(N, 28, 28, 1)` in [-1, 1], as `data.load_data` returns them; N > 2 * HELD_OUT.
        labels: int32 `(N,)`.

    Returns:
        `(classifier, reference, info)` as `judge.Judge` takes them.
    """
    import keras
    import numpy as np

    from cgan_keras.metrics.judge import BATCH_SIZE, build_judge
    from cgan_keras.metrics.scores import classifier_score

    images = (images + 1) / 2
    order = np.random.default_rng(seed).permutation(len(images))
    held_out, train = order[:HELD_OUT], order[HELD_OUT:]
    keras.utils.set_random_seed(seed)
    classifier = build_judge(images.shape[1:])
    steps = epochs * math.ceil(len(train) / 128)
    optimizer = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(2e-3, decay_steps=steps))
    classifier.compile(optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    started = time.perf_counter()
    classifier.fit(images[train], labels[train], batch_size=128, epochs=epochs, verbose=verbose)
    train_seconds = time.perf_counter() - started
    _, accuracy = classifier.evaluate(images[held_out], labels[held_out], batch_size=BATCH_SIZE, verbose=0)
    features_and_probabilities = keras.Model(
        classifier.input, [classifier.get_layer("features").output, classifier.output]
    )
    features, probabilities = features_and_probabilities.predict(images[held_out], batch_size=BATCH_SIZE, verbose=0)
    # Class by class, alternate digits go to A and B: two halves with the same class mix.
    by_class = held_out[np.argsort(labels[held_out], kind="stable")]
    position = {index: rank for rank, index in enumerate(held_out)}
    half_a, half_b = by_class[0::2], by_class[1::2]
    rows_a, rows_b = [position[i] for i in half_a], [position[i] for i in half_b]
    reference = {
        "features_a": features[rows_a].astype(np.float16),
        "labels_a": labels[half_a].astype(np.uint8),
        "features_b": features[rows_b].astype(np.float16),
        "labels_b": labels[half_b].astype(np.uint8),
    }
    info = {
        "held_out_accuracy": float(accuracy),
        "real_classifier_score": classifier_score(probabilities),
        "held_out": HELD_OUT,
        "train": len(train),
        "epochs": epochs,
        "seed": seed,
        "train_seconds": round(train_seconds, 1),
    }
    return classifier, reference, info


def save_judge(classifier, reference, info, directory):
    """Writes `judge.weights.h5`, `reference.npz` and `judge.json` into `directory`, each atomically."""
    import json

    import numpy as np

    from cgan_keras.artifacts import atomic_path
    from cgan_keras.metrics.judge import build_judge

    directory = Path(directory)
    # The weights alone, without the optimizer's state: a third of the size.
    weights_only = build_judge(classifier.input_shape[1:], classifier.output_shape[-1])
    weights_only.set_weights(classifier.get_weights())
    with atomic_path(directory / "judge.weights.h5") as temporary:
        weights_only.save_weights(temporary)
    with atomic_path(directory / "reference.npz") as temporary:
        np.savez_compressed(temporary, **reference)
    with atomic_path(directory / "judge.json") as temporary:
        temporary.write_text(json.dumps(info, indent=2) + "\n")


def main(argv=None):
    args = parse_args(argv)
    cli.import_tensorflow(PROG)  # quietly: TensorFlow's start-up lines are filtered
    from cgan_keras import data
    from cgan_keras.metrics.judge import FILES

    try:
        source = data.resolve_source(args.data)
        images, labels = data.load_data(source)
    except data.DataError as error:
        fail(str(error))
    if len(images) < 2 * HELD_OUT:
        fail(f"--data {args.data} holds {len(images):,} digits; the judge needs at least {2 * HELD_OUT:,}.")
    classifier, reference, info = train_judge(images, labels, args.epochs, args.seed)
    if Path(source).is_file():  # `auto` may resolve to a file; `mnist` is Keras' download
        info["sha256"] = hashlib.sha256(Path(source).read_bytes()).hexdigest()
    info["data"] = Path(source).name
    out = Path(args.out) if args.out else FILES
    save_judge(classifier, reference, info, out)
    print(f"judge: {info['held_out_accuracy']:.2%} on {HELD_OUT:,} held-out digits; wrote {out}/")


if __name__ == "__main__":
    main()
