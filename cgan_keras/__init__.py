"""cgan-keras: a conditional GAN on handwritten digits, in Keras 3.

`import cgan_keras` registers the package's Keras classes, so that `.keras`
files (`gan.keras`, checkpoints) load with `keras.models.load_model` and no
`custom_objects`, as after `import keras_hub`. That imports TensorFlow
(~5 s), except in two cases:

- TensorFlow is not installed (a deployment with onnxruntime alone):
  `DigitSampler.from_onnx` works without it.
- `CGAN_KERAS_DEFER_TENSORFLOW=1`, which `train.py` and `infer.py` set, and
  `python -m cgan_keras.<tool>`: the command-line tools check their arguments
  before paying for TensorFlow, and `infer.py` runs an ONNX model without it.

The public names below load on first use.
"""

import importlib
import importlib.util
import os
import sys

_PUBLIC = {
    "ConditionalGAN": "cgan_keras.gan",
    "DigitSampler": "cgan_keras.sampler",
    "SampleGridCallback": "cgan_keras.callbacks",
    "TrainConfig": "cgan_keras.config",
    "build_discriminator": "cgan_keras.models",
    "build_generator": "cgan_keras.models",
    "export_generator": "cgan_keras.export",
    "export_onnx": "cgan_keras.export",
    "load_data": "cgan_keras.data",
    "make_dataset": "cgan_keras.data",
}
__all__ = sorted(_PUBLIC)


def _tensorflow_deferred():
    # `python -m cgan_keras.evaluate` imports this package before the tool, which imports TensorFlow
    # itself, quietly, once its arguments are checked. sys.orig_argv is the interpreter's own command line.
    command = getattr(sys, "orig_argv", [])
    tool = "-m" in command[:-1] and command[command.index("-m") + 1].startswith("cgan_keras.")
    return tool or os.environ.get("CGAN_KERAS_DEFER_TENSORFLOW") == "1"


if not _tensorflow_deferred() and importlib.util.find_spec("tensorflow") is not None:
    importlib.import_module("cgan_keras.gan")  # registers ConditionalGAN with Keras


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'cgan_keras' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)


def __dir__():
    return __all__
