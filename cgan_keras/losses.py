"""The generator's loss of the hinge GAN: the discriminator's logit itself, without the margin."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="cgan_keras")
class LinearLoss(keras.losses.Loss):
    """`-logit` for target 1 (real), `+logit` for target 0 (fake), averaged over the batch.

    The hinge GAN (Lim & Ye, 2017; Miyato et al., 2018) trains the discriminator
    with the hinge loss and the generator, its fakes labelled real, with this
    one: the hinge for target 1, `max(0, 1 - logit)`, without its clip at the
    margin, so fakes the discriminator already rates above 1 still move.

    Example:

    >>> float(LinearLoss()(ops.ones((2, 1)), ops.array([[0.5], [1.5]])))  # -(0.5 + 1.5) / 2
    -1.0
    """

    def __init__(self, reduction="sum_over_batch_size", name="linear_loss", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        """Per-sample losses of logits `y_pred` `(N, 1)` against targets `y_true` `(N, 1)` in {0, 1}."""
        return ops.mean((1.0 - 2.0 * y_true) * y_pred, axis=-1)
