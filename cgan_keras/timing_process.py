"""The child process in which `--jit-compile auto` times a model on a CPU (`speed.time_in_child_process`).

    python -m cgan_keras.timing_process DIRECTORY

`DIRECTORY` holds `config.json` (the run's `TrainConfig`), `request.json`
(the XLA setting, the dtype policy, the warm-up and timed steps, the threads
per op) and `batches.npz` (`images`, `labels`). The child writes `result.json` there:
`{"seconds": median seconds per timed step}`, or `{"error": "UnimplementedError"}`
when TensorFlow cannot run the step (e.g. an op XLA cannot compile here).
"""

import json
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

from cgan_keras import distribute, speed, training
from cgan_keras.artifacts import atomic_path
from cgan_keras.config import TrainConfig


def main(directory):
    directory = Path(directory)
    request = json.loads((directory / "request.json").read_text())
    # Both fix TensorFlow's runtime, so they come before anything runs.
    speed.set_intra_op_threads(request["intra_op_threads"])
    config = TrainConfig.load(directory / "config.json")
    strategy = distribute.make_strategy(config.strategy, config.cpu_replicas)
    batches = np.load(directory / "batches.npz")
    try:
        result = {
            "seconds": training.time_model_steps(
                config,
                batches["images"],
                batches["labels"],
                strategy,
                request["jit_compile"],
                request["policy"],
                request["warmup_steps"],
                request["timed_steps"],
            )
        }
    except tf.errors.OpError as error:
        result = {"error": type(error).__name__}
    with atomic_path(directory / "result.json") as temporary:
        temporary.write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
