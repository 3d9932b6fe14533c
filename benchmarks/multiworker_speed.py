"""Steps/s of `--strategy multiworker` on loopback: 1 worker against 2, through `loop.DistributedLoop`.

Examples:

    python benchmarks/multiworker_speed.py                   # default networks, batch 64, 100 timed steps
    python benchmarks/multiworker_speed.py --tiny --steps 20 # smoke test

For each worker count, this script starts that many copies of itself with a
`TF_CONFIG` naming free 127.0.0.1 ports. Every worker builds the run's GAN with
`training.build_gan` under a `MultiWorkerMirroredStrategy`, warms up for
`--warmup` steps (tracing, collective group set-up), then times `--steps` steps
of `DistributedLoop.fit`; the chief prints its wall time. The global batch is
`--batch-size` whatever the worker count, so 2 workers on the same cores split
the same work and add the cost of the collectives: on one machine this shows
the overhead, not a speed-up.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cgan_keras import cli  # noqa: E402

TINY = dict(latent_dim=8, generator_filters=(8, 4), discriminator_filters=(4, 8))


def parse_args(argv=None):
    parser = cli.make_parser(__doc__)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to time")
    parser.add_argument("--steps", type=int, default=100, help="timed steps")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny networks instead of the default ones")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # set in the copies it starts
    return parser.parse_args(argv)


def worker(args):
    """One worker of the cluster in TF_CONFIG; the chief prints `seconds <timed wall time>`."""
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    from cgan_keras import data, loop, training
    from cgan_keras.config import TrainConfig

    config = TrainConfig(batch_size=args.batch_size, **(TINY if args.tiny else {}))
    images, labels = data.load_data("builtin")
    gan = training.build_gan(config, strategy)
    distributed = loop.DistributedLoop(gan, strategy, images, labels, config.batch_size, config.seed)
    distributed.fit(initial_epoch=0, epochs=1, steps_per_epoch=args.warmup, verbose=0)
    started = time.perf_counter()
    distributed.fit(initial_epoch=0, epochs=1, steps_per_epoch=args.steps, verbose=0)
    if loop.is_chief(strategy):
        print(f"seconds {time.perf_counter() - started}", flush=True)


def time_cluster(args, count):
    """Starts `count` workers on free loopback ports; returns the chief's timed seconds."""
    probes = [socket.socket() for _ in range(count)]
    for probe in probes:
        probe.bind(("127.0.0.1", 0))
    cluster = {"worker": [f"127.0.0.1:{probe.getsockname()[1]}" for probe in probes]}
    for probe in probes:
        probe.close()
    flags = ["--worker", "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size)]
    workers = [
        subprocess.Popen(
            [sys.executable, __file__, *flags, *(["--tiny"] if args.tiny else [])],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})},
        )
        for i in range(count)
    ]
    outputs = [process.communicate()[0] for process in workers]
    if any(process.returncode for process in workers):
        sys.exit(f"a worker failed: exit codes {[process.returncode for process in workers]}")
    return float(next(line for line in outputs[0].splitlines() if line.startswith("seconds")).split()[1])


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    from benchmarks import common

    print("\n".join(common.environment_lines()))
    print(f"networks: {'tiny' if args.tiny else 'default'}; global batch {args.batch_size}; {args.steps} timed steps")
    rows = []
    for count in args.workers:
        seconds = time_cluster(args, count)
        rows.append([str(count), f"{args.steps / seconds:.1f}", f"{seconds / args.steps * 1000:.0f}"])
    common.print_table(["workers", "steps/s", "ms/step"], rows)


if __name__ == "__main__":
    main()
