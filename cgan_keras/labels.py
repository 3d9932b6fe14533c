"""The one rule for digit labels, shared by training data, `ConditionalGAN` calls and `DigitSampler`.

Numpy only, so `DigitSampler.from_onnx` keeps running without TensorFlow.
"""

import numpy as np


def check_labels(labels, num_classes: int, name: str = "labels") -> np.ndarray:
    """Checks class labels and returns them as int32 `(N,)` in 0..num_classes-1.

    Args:
        labels: integer class indices `(N,)` or `(N, 1)`, or one-hot
            `(N, num_classes)`; any array-like.
        num_classes: number of digit classes.
        name: what the error messages call them.

    Raises:
        ValueError: another shape, non-integer (bool and float included) indices,
            a row that is not one-hot, or an index out of range; the message names
            the first offending row.
    """
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    elif labels.ndim == 2 and labels.shape[1] == num_classes:
        one_hot = np.all((labels == 0) | (labels == 1), axis=1) & (labels.sum(axis=1) == 1)
        if not one_hot.all():
            row = int(np.argmin(one_hot))
            raise ValueError(f"Expected one-hot rows (a single 1). Received: {name}[{row}]={labels[row].tolist()}")
        labels = labels.argmax(axis=1)
    if labels.ndim != 1:
        expected = f"(N,), (N, 1) or (N, {num_classes})"
        raise ValueError(f"Expected {name} of shape {expected}. Received: {name}.shape={labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"Expected integer class indices. Received: {name}.dtype={labels.dtype}")
    out_of_range = (labels < 0) | (labels >= num_classes)
    if out_of_range.any():
        row = int(np.argmax(out_of_range))
        raise ValueError(f"Expected class indices in 0..{num_classes - 1}. Received: {name}[{row}]={labels[row]}")
    return labels.astype(np.int32, copy=False)
