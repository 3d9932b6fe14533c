"""What the command-line tools share: a parser built from their docstring, one-line user errors, a quiet start.

Importing this is cheap (no TensorFlow), so a CLI can check its arguments first.
"""

import argparse
import os
import re
import sys
import tempfile

# TensorFlow 2.21's start-up lines that report nothing wrong: absl's banner, INFO lines (oneDNN is on, no CUDA
# driver found), and the ERROR line of cuInit failing where there is no GPU driver.
_STARTUP_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|I\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] "
    r"|E\d{4} [\d:.]+ +\d+ cuda_platform\.cc:\d+\] failed call to cuInit"
)


def make_parser(doc, **kwargs):
    """Returns an `argparse.ArgumentParser` described by a CLI module's docstring.

    The first paragraph becomes the description; the rest (the copy-paste
    examples) the epilog, line breaks kept. `kwargs` go to the parser. Its
    errors are one line, as `fail` writes them (argparse would print the
    whole usage first: 20 lines for train.py), with exit code 2.
    """
    summary, examples = doc.split("\n\n", 1)
    kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
    return _OneLineErrorParser(description=summary, epilog=examples, **kwargs)


class _OneLineErrorParser(argparse.ArgumentParser):
    def error(self, message):
        fail(self.prog, f"{message} (--help lists the flags)")


def fail(prog, message):
    """Reports a user mistake in one line on stderr and exits with code 2 (argparse's convention)."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


def survive_closed_output():
    """Makes stdout's or stderr's reader going away cost the output only, not the run.

    E.g. `python train.py |& tee log`, whose tee the same Ctrl-C kills. A
    write to a pipe with no reader raises `BrokenPipeError`; raised from the
    progress line during a stop, it lost the stop's checkpoint and export.
    From the first such error on, that stream's file descriptor points at
    `os.devnull`, so every later write (and the flush at exit) succeeds.
    """
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if not isinstance(stream, _WithoutReader):
            setattr(sys, name, _WithoutReader(stream))


class _WithoutReader:
    """`stream`, with writes and flushes that send it to `os.devnull` when its reader has gone."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._to_devnull()
            return len(text)

    def flush(self):
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._to_devnull()

    def _to_devnull(self):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())
        os.close(devnull)

    def __getattr__(self, name):  # isatty, fileno, encoding, ...: the stream's own
        return getattr(self._stream, name)


def check_keras_backend(prog):
    """Exits as `fail` does unless Keras would run on TensorFlow: the models, exports and judge are TensorFlow's."""
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend != "tensorflow":
        message = "cgan-keras runs on Keras' TensorFlow backend; unset KERAS_BACKEND."
        fail(prog, f"{message} Received: KERAS_BACKEND={backend}")


def import_tensorflow(prog):
    """Imports TensorFlow and finds its devices without its start-up noise on stderr; returns the module.

    First `check_keras_backend(prog)`: the tools that import TensorFlow also use Keras.

    Some of TensorFlow's start-up lines come from C++ before any setting
    applies (`TF_CPP_MIN_LOG_LEVEL` does not reach them), so the import and
    the device discovery run with file descriptor 2 sent to a temporary file.
    Then the lines that `_STARTUP_NOISE` matches are dropped and all others
    (a real error, a Python warning) are written to stderr, also when the
    import fails. Later C++ logs are off too (`TF_CPP_MIN_LOG_LEVEL=3`): at
    level 2 grappler prints a harmless `remapper failed` ERROR line into the
    first step on CPUs. Errors that stop a run still raise in Python. A user
    who sets the level to 0 or 1 asked for TensorFlow's logs and gets them all.
    """
    check_keras_backend(prog)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if os.environ["TF_CPP_MIN_LOG_LEVEL"] in ("0", "1"):
        import tensorflow as tf

        return tf
    sys.stderr.flush()
    saved_stderr = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # where cuInit runs, and fails without a GPU driver
        finally:
            sys.stderr.flush()
            os.dup2(saved_stderr, 2)
            os.close(saved_stderr)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not _STARTUP_NOISE.match(line)))
    return tf
