"""Shared pieces of the benchmarks: machine header, matmul peak, FLOP counting, timing, tables.

Import after setting `TF_CPP_MIN_LOG_LEVEL`: this module imports TensorFlow.
"""

import datetime
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from cgan_keras import distribute

REPO_ROOT = Path(__file__).resolve().parents[1]
# The layers whose multiply-accumulates are counted; everything else (BatchNorm,
# activations, concatenation, the projection's dot product) is elementwise or tiny.
COUNTED_LAYERS = (keras.layers.Conv2D, keras.layers.Conv2DTranspose, keras.layers.Dense)


def environment_lines():
    """Returns `key: value` lines that say what was measured, where and when."""

    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()

    commit = (git("rev-parse", "--short", "HEAD") or "unknown") + ("+dirty" if git("status", "--porcelain") else "")
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    bf16 = " ".join(sorted(distribute.cpu_flags(cpuinfo) & distribute.BFLOAT16_FLAGS)) or "no bf16 flags"
    # They decide whether bf16 is native here (`distribute.usable_cpu_flags`), so a reader sees them.
    bf16 += "".join(f", {name}={os.environ[name]}" for name in distribute.ONEDNN_SETTINGS if name in os.environ)
    return [
        f"commit: {commit}",
        f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"cpu: {models[0] if models else platform.processor() or 'unknown'} ({bf16}), "
        f"{len(os.sched_getaffinity(0))} usable of {os.cpu_count()} cores",
        f"python {platform.python_version()}, tensorflow {tf.__version__}, keras {keras.__version__}",
    ]


def median_seconds(function, repeats, min_seconds=0.0, warmup=1):
    """Calls `function` `warmup` times, then at least `repeats` times and `min_seconds` long.

    Returns:
        `(median seconds per call, list of every call's seconds)`.
    """
    for _ in range(warmup):
        function()
    times, started = [], time.perf_counter()
    while len(times) < repeats or time.perf_counter() - started < min_seconds:
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def matmul_peak_flops(size=2048, repeats=20):
    """Measures the machine's peak float32 matmul rate with TensorFlow, in FLOP/s.

    A `size x size` by `size x size` matmul is `2 * size**3` FLOPs; the
    fastest of `repeats` calls is the peak (on a shared machine a median
    would count other processes' load as the machine's limit). With fewer
    threads per op than cores (`--intra-op-threads`), as many independent
    matmuls run at once as it takes to keep every core busy: the peak is the
    machine's, whatever the threads per op.
    """
    cores = len(os.sched_getaffinity(0))
    parallel = max(1, cores // (tf.config.threading.get_intra_op_parallelism_threads() or cores))
    rng = np.random.default_rng(0)
    # Distinct operands, so that the graph optimizer cannot merge the matmuls into one.
    operands = [tf.constant(rng.standard_normal((size, size), dtype=np.float32)) for _ in range(2 * parallel)]
    pairs = list(zip(operands[::2], operands[1::2], strict=True))
    # Reducing the products on the device keeps the copy of the results out of the timing.
    matmul = tf.function(lambda: tf.add_n([tf.reduce_sum(tf.matmul(left, right)) for left, right in pairs]))
    _, times = median_seconds(lambda: matmul().numpy(), repeats, warmup=2)
    return parallel * 2 * size**3 / min(times)


def layer_macs(model, weights_need_grad, differentiable_inputs=()):
    """Multiply-accumulates per sample of the counted layers of a functional `model`.

    Also says, for a backward pass, whether each layer needs the gradient with
    respect to its input: only if that input depends on something being
    differentiated (a trainable weight when `weights_need_grad`, or one of the
    `differentiable_inputs`, given by input name).

    Returns:
        A list of `(layer, macs_per_sample, input_needs_grad)`.
    """
    needs_grad = {id(tensor) for tensor in model.inputs if tensor.name in differentiable_inputs}
    counted = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        input_needs_grad = any(id(tensor) in needs_grad for tensor in keras.tree.flatten(layer.input))
        if input_needs_grad or (weights_need_grad and layer.trainable_weights):
            needs_grad.update(id(tensor) for tensor in keras.tree.flatten(layer.output))
        if isinstance(layer, COUNTED_LAYERS):
            counted.append((layer, _macs_per_sample(layer), input_needs_grad))
    return counted


def _macs_per_sample(layer):
    in_shape, out_shape = layer.input.shape[1:], layer.output.shape[1:]
    if isinstance(layer, keras.layers.Dense):
        return int(np.prod(in_shape)) * layer.units
    kernel_area = int(np.prod(layer.kernel_size))
    if isinstance(layer, keras.layers.Conv2DTranspose):
        # Each input pixel is scattered through the kernel to every output channel.
        return int(np.prod(in_shape)) * kernel_area * layer.filters
    return int(np.prod(out_shape)) * kernel_area * in_shape[-1] // layer.groups


def forward_flops(model):
    """FLOPs per sample of one forward pass (2 per multiply-accumulate)."""
    return 2 * sum(macs for _, macs, _ in layer_macs(model, weights_need_grad=False))


def backward_flops(model, weights_need_grad, differentiable_inputs=()):
    """FLOPs per sample of one backward pass.

    A layer's weight gradient costs as much as its forward pass, and so does
    its input gradient when one is needed; hence "backward ~ 2x forward",
    less the input gradients nobody needs.
    """
    flops = 0
    for layer, macs, input_needs_grad in layer_macs(model, weights_need_grad, differentiable_inputs):
        flops += 2 * macs * (int(weights_need_grad and bool(layer.trainable_weights)) + int(input_needs_grad))
    return flops


def print_table(headers, rows):
    """Prints `rows` (lists of str) under `headers` as an aligned markdown table."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells):
        return "| " + " | ".join(str(cell).ljust(width) for cell, width in zip(cells, widths, strict=True)) + " |"

    print(line(headers))
    print("|" + "|".join("-" * (width + 2) for width in widths) + "|")
    for row in rows:
        print(line(row))


def one_line(error):
    """`Type: first line of the message`, short enough for a table cell."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:120]}{'...' if len(text) > 120 else ''}"
