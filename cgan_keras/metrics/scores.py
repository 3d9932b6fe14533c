"""The scores of a generator, as plain functions of judge outputs (numpy in, floats out).

Each takes what the judge computed for real and generated digits:
features float `(N, D)`, probabilities float `(N, K)`, digits int `(N,)`.
"""

import warnings

import numpy as np
import scipy.linalg
import scipy.special

PRECISION_RECALL_K = 3
_ROWS_PER_CHUNK = 1024


def frechet_distance(features_a, features_b):
    """Frechet distance of Gaussians fitted to two feature sets (the FID formula), in float64.

    `|mu_a - mu_b|^2 + tr(S_a + S_b - 2 sqrt(S_a S_b))`. Small samples bias it
    upwards: compare only values computed from the same sample sizes.

    Args:
        features_a: float `(N, D)`, N >= 2.
        features_b: float `(M, D)`, M >= 2.

    Returns:
        A float >= 0 (up to rounding).
    """
    features_a, features_b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    if (
        features_a.ndim != 2
        or features_a.shape[1:] != features_b.shape[1:]
        or min(len(features_a), len(features_b)) < 2
    ):
        raise ValueError(
            "Expected features (N, D) and (M, D) with N, M >= 2. "
            f"Received: features_a.shape={features_a.shape}, features_b.shape={features_b.shape}"
        )
    mean_a, mean_b = features_a.mean(axis=0), features_b.mean(axis=0)
    sigma_a = np.atleast_2d(np.cov(features_a, rowvar=False))
    sigma_b = np.atleast_2d(np.cov(features_b, rowvar=False))
    # scipy 1.16 deprecated `disp=False`; sqrtm now warns on singular products
    # instead. Those are routine here (dead ReLU units, fewer samples than
    # features) and are caught by the finiteness check and its offset retry.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma_a @ sigma_b)
        if not np.isfinite(covmean).all():
            offset = np.eye(len(sigma_a)) * 1e-6
            covmean = scipy.linalg.sqrtm((sigma_a + offset) @ (sigma_b + offset))
    if not np.isfinite(covmean).all() or not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
        raise ValueError(
            "sqrt(S_a S_b) is not finite or has a large imaginary part: the feature covariances are "
            f"ill-conditioned. Received: max |imag| on the diagonal={np.abs(np.diagonal(covmean).imag).max()}"
        )
    covmean = covmean.real
    difference = mean_a - mean_b
    return float(difference @ difference + np.trace(sigma_a) + np.trace(sigma_b) - 2 * np.trace(covmean))


def intra_class_frechet_distance(features_a, digits_a, features_b, digits_b):
    """Mean over digits of the FID between the two sets' images of that digit.

    Catches what the overall FID forgives: a generator that draws each digit
    in only a few styles, or one digit in another digit's style.

    Args:
        features_a, features_b: float `(N, D)` and `(M, D)`.
        digits_a, digits_b: int `(N,)` and `(M,)`; every digit of either set
            must have at least 2 images in both.

    Returns:
        A float >= 0.
    """
    digits_a, digits_b = np.asarray(digits_a), np.asarray(digits_b)
    classes = np.union1d(digits_a, digits_b)
    return float(
        np.mean([frechet_distance(features_a[digits_a == digit], features_b[digits_b == digit]) for digit in classes])
    )


def precision_recall(real_features, fake_features, k=PRECISION_RECALL_K):
    """Improved precision and recall (Kynkaanniemi et al., 2019) in a feature space.

    Each set's manifold is the union of balls around its points, each ball
    reaching the point's k-th nearest neighbour in the same set. Precision is
    the share of fakes inside the real manifold (fidelity); recall the share
    of reals inside the fake manifold (diversity).

    Args:
        real_features: float `(N, D)`, N > k.
        fake_features: float `(M, D)`, M > k.
        k: neighbourhood size.

    Returns:
        `(precision, recall)`, floats in [0, 1].
    """
    real_features = np.asarray(real_features, np.float64)
    fake_features = np.asarray(fake_features, np.float64)
    if min(len(real_features), len(fake_features)) <= k:
        raise ValueError(
            f"Expected more than k={k} features in each set. "
            f"Received: {len(real_features)} real, {len(fake_features)} fake"
        )
    real_radii = _kth_neighbour_distances(real_features, k)
    fake_radii = _kth_neighbour_distances(fake_features, k)
    precision = _inside_manifold(fake_features, real_features, real_radii).mean()
    recall = _inside_manifold(real_features, fake_features, fake_radii).mean()
    return float(precision), float(recall)


def _squared_distances(rows, columns):
    distances = (rows**2).sum(1)[:, None] + (columns**2).sum(1)[None, :] - 2 * rows @ columns.T
    return np.maximum(distances, 0)


def _kth_neighbour_distances(features, k):
    # The k + 1-th smallest distance of a point to its own set: the first is to itself.
    radii = [
        np.partition(_squared_distances(features[start : start + _ROWS_PER_CHUNK], features), k, axis=1)[:, k]
        for start in range(0, len(features), _ROWS_PER_CHUNK)
    ]
    return np.concatenate(radii)


def _inside_manifold(points, manifold_points, manifold_radii):
    inside = [
        (_squared_distances(points[start : start + _ROWS_PER_CHUNK], manifold_points) <= manifold_radii).any(1)
        for start in range(0, len(points), _ROWS_PER_CHUNK)
    ]
    return np.concatenate(inside)


def classifier_score(probabilities):
    """Inception Score with the judge, `exp(mean_x KL(p(y|x) || p(y)))`, of float `(N, K)` probabilities.

    In [1, K]: K for confident predictions spread evenly over K classes, 1 when
    every image gets the same prediction.
    """
    probabilities = np.asarray(probabilities, np.float64)
    marginal = probabilities.mean(axis=0, keepdims=True)
    return float(np.exp(scipy.special.rel_entr(probabilities, marginal).sum(axis=1).mean()))


def label_accuracy(probabilities, digits):
    """Share of images whose most probable class is their digit, overall and per class.

    Args:
        probabilities: float `(N, K)`.
        digits: int `(N,)` the digit each image should show.

    Returns:
        `(accuracy, per_class)`: a float and float64 `(K,)`, NaN for a class without images.
    """
    num_classes = np.shape(probabilities)[1]
    correct = np.argmax(probabilities, axis=1) == digits
    hits = np.bincount(digits, weights=correct, minlength=num_classes)
    counts = np.bincount(digits, minlength=num_classes)
    per_class = np.divide(hits, counts, out=np.full(num_classes, np.nan), where=counts > 0)
    return float(correct.mean()), per_class
