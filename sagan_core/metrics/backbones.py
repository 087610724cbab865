"""Feature extractors for the Inception-based metrics.

The network is torch-fidelity's FeatureExtractorInceptionV3: the TensorFlow FID Inception (2015-12-05) ported
layer for layer, fed uint8 images that it resizes to 299x299 with TF1-compatible bilinear interpolation, in
float32. It yields the 2048-d pool features (FID, KID, precision/recall) and the 1008 unbiased logits (IS),
torch-fidelity's default layers for each metric. Anything with the same call signature can stand in for it
(the tests inject a small deterministic one).
"""

from __future__ import annotations

import io
from contextlib import contextmanager
from typing import Protocol

import torch
from torch import nn
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

from .weights import InceptionWeights

POOL, LOGITS = "2048", "logits_unbiased"


class Backbone(Protocol):
    """uint8 images (B, 3, H, W) -> {"pool": (B, D) float32, "logits": (B, K) float32}."""

    name: str
    weights_sha256: str | None

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]: ...


class _RandomInitInceptionV3(FeatureExtractorInceptionV3):
    """The same network with random weights (tests and timing without the weights file). He-initialised so
    that activations keep their scale through the 90-odd layers and the features still depend on the image
    (torch's default initialisation shrinks them to about 1e-9)."""

    def load_state_dict(self, state_dict, strict=True, assign=False):
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        return super().load_state_dict(state_dict, strict=False, assign=assign)


class InceptionV3:
    """torch-fidelity's FID Inception on one device, as a Backbone."""

    def __init__(self, weights: InceptionWeights, device: torch.device | str = "cpu") -> None:
        self.name, self.weights_sha256 = weights.backbone, weights.sha256
        self.device = torch.device(device)
        if weights.path is None:
            empty = io.BytesIO()
            torch.save({}, empty)
            empty.seek(0)
            with torch.random.fork_rng(devices=[]):  # the same random network every time, RNG untouched
                torch.manual_seed(0)
                network = _RandomInitInceptionV3("inception-v3-compat", [POOL, LOGITS],
                                                 feature_extractor_weights_path=empty)
        else:  # the file's sha256 was checked when `weights` was resolved
            network = FeatureExtractorInceptionV3("inception-v3-compat", [POOL, LOGITS],
                                                  feature_extractor_weights_path=str(weights.path))
        self.network = network.to(self.device).eval()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        with _full_float32():
            pool, logits = self.network(images.to(self.device))
        return {"pool": pool, "logits": logits}


@contextmanager
def _full_float32():
    """No TF32 in cuDNN convolutions (torch's default allows it): features as the float32 reference gives
    them."""
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = previous
