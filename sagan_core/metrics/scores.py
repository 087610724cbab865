"""The metrics from accumulated features, through torch-fidelity's own functions where it has them.

Conventions (torch-fidelity's defaults): FID from the features' mean and covariance (np.cov, float64);
KID = unbiased MMD^2 with the cubic polynomial kernel, mean and std over 100 subsets of min(1000, n) rows;
IS = exp(E KL(p(y|x) || p(y))) on softmax(logits), mean and std over 10 splits of the (seeded) shuffled
samples; precision/recall with k = 3 nearest neighbours (Kynkaenniemi et al. 2019) on the pool features.
"""

from __future__ import annotations

import numpy as np
import torch
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import calculate_precision_recall_part

KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000
IS_SPLITS = 10
PR_NEIGHBOURS = 3
PR_BATCH = 2048  # rows of the distance matrix in memory at a time
RNG_SEED = 2020  # torch-fidelity's default for its subset and split draws


def frechet_statistics(features: torch.Tensor) -> dict[str, np.ndarray]:
    """{"mu": (D,), "sigma": (D, D)} in float64."""
    return fid_features_to_statistics(features.float().cpu())


def fid(fake: dict[str, np.ndarray], real: dict[str, np.ndarray]) -> float:
    return fid_statistics_to_metric(fake, real, verbose=False)["frechet_inception_distance"]


def kid(fake: torch.Tensor, real: torch.Tensor) -> tuple[float, float, int]:
    """(mean, std, subset size)."""
    size = min(KID_SUBSET_SIZE, len(fake), len(real))
    result = kid_features_to_metric(fake, real, kid_subsets=KID_SUBSETS, kid_subset_size=size,
                                    rng_seed=RNG_SEED, verbose=False)
    return result["kernel_inception_distance_mean"], result["kernel_inception_distance_std"], size


def inception_score(logits: torch.Tensor, splits: int = IS_SPLITS) -> tuple[float, float]:
    """(mean, std) over `splits` splits (fewer when there are fewer samples)."""
    result = isc_features_to_metric(logits, splits=min(splits, len(logits)), shuffle=True, rng_seed=RNG_SEED)
    return result["inception_score_mean"], result["inception_score_std"]


def precision_recall(fake: torch.Tensor, real: torch.Tensor, k: int = PR_NEIGHBOURS) -> tuple[float, float]:
    """Precision: the share of fakes inside some real sample's k-NN ball; recall: of reals inside a fake's."""
    return calculate_precision_recall_part(fake, real, neighborhood=k, batch_size=PR_BATCH)
