"""An exponential moving average (EMA) of a network's weights: a copy that changes slowly.

GAN generators sampled from such an average draw cleaner digits than the raw
network at any single step (Karras et al. 2018, Yazici et al. 2019); here the
averaged copy is what is sampled, exported and evaluated.
"""

import keras
from keras import ops


def averaged_copy(network):
    """A network of the same architecture, name and weights: the average starts where `network` is.

    Its layers keep their names (the exported inputs `digit` and `noise` are
    named by them); its variables' paths start with `ema/`, so that a model
    holding both networks has unique paths, as `get_state_tree` requires.
    """
    with keras.name_scope("ema"):
        # Not through the serialization registry: a custom layer need not be registered until it is saved.
        copy = keras.models.clone_model(network)
    copy.set_weights(network.get_weights())
    return copy


def update(average, network, step, decay):
    """Moves `average`'s trainable weights towards `network`'s: `a <- d * a + (1 - d) * w`.

    The decay ramps up as `d = min(decay, (1 + step) / (10 + step))`, so the
    first steps are not averaged with the random initialization. BatchNorm's
    moving statistics are not trainable weights and are left to the caller:
    averaged the same way from initialization they lag far behind (a generator
    at chance for 2,000 steps), and copied from `network` they normalize
    another network's activations (FID 10-20% worse; both measured).

    Args:
        average: the averaged network (from `averaged_copy`).
        network: the trained network.
        step: int or scalar tensor, training steps so far.
        decay: the decay once ramped up, in [0, 1).
    """
    step = ops.cast(step, "float32")
    ramped = ops.minimum(decay, (1.0 + step) / (10.0 + step))
    for averaged, weight in zip(average.weights, network.weights, strict=True):
        if weight.trainable:  # a frozen network (`trainable = False`) keeps its average as it is
            averaged.assign(ramped * averaged + (1.0 - ramped) * ops.cast(weight, averaged.dtype))
