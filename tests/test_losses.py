import keras
import numpy as np
import pytest

from cgan_keras.losses import LinearLoss


@pytest.mark.parametrize(("target", "sign"), [(1.0, -1.0), (0.0, 1.0)])
def test_linear_loss_is_the_mean_logit_signed_by_the_target(target, sign):
    logits = np.array([[-3.0], [0.5], [2.5]], dtype="float32")  # beyond the hinge's margin too
    loss = LinearLoss()(np.full((3, 1), target, dtype="float32"), logits)
    np.testing.assert_allclose(float(loss), sign * logits.mean(), rtol=1e-6)


def test_linear_loss_round_trips_through_keras_serialization():
    restored = keras.losses.deserialize(keras.losses.serialize(LinearLoss(name="g")))
    assert isinstance(restored, LinearLoss) and restored.name == "g"
