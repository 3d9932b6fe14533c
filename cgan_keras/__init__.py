"""cgan-keras: a conditional GAN on handwritten digits, in Keras 3.

The public names load on first use, so `import cgan_keras.config` (what the
CLIs need to check their arguments) does not pay TensorFlow's ~5 s import.
Using `ConditionalGAN` (or importing `cgan_keras.gan`) registers the Keras
classes, after which `.keras` files load with `keras.models.load_model` and
no `custom_objects`.
"""

import importlib

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


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'cgan_keras' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)


def __dir__():
    return __all__
