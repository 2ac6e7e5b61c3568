"""Architectures: every configuration of the paper's Table 1, as torchvision ``VGG`` objects.

A, B, D and E (and their batch-normalised variants) are torchvision's own ``vgg11``, ``vgg13``,
``vgg16`` and ``vgg19``. The two configurations torchvision lacks are built here from a cfg list in
torchvision's style, with its ``VGG`` class and classifier, so that everything that walks a
torchvision VGG also walks them:

- **A-LRN** (``vgg11_lrn``): A with Local Response Normalisation after the first conv layer
  (Table 1: conv3-64, LRN, maxpool).
- **C** (``vgg16_c``): D with 1x1 instead of 3x3 convolutions as the third conv layer of blocks 3-5
  (Table 1: conv1-256, conv1-512, conv1-512).

No ImageNet weights exist for these two; they serve ``vggfeat describe``. Build them under
``torch.device("meta")`` to get shapes and parameter counts without allocating any weights.
"""

from __future__ import annotations

import torchvision
from torch import nn
from torchvision.models import VGG

from .choices import ALL_ARCHITECTURES, ARCHITECTURES
from .errors import VggfeatError

# Krizhevsky et al. (2012), Sec. 3.3: k = 2, n = 5, alpha = 1e-4, beta = 0.75, with
# b = a / (k + alpha * sum of a^2 over n channels)^beta, applied after the ReLU. Simonyan & Zisserman,
# Sec. 2.1: "the parameters for the LRN layer are those of (Krizhevsky et al., 2012)". PyTorch's
# LocalResponseNorm divides alpha by the window size, so the paper's alpha is passed as alpha * size.
LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K = 5, 1e-4, 0.75, 2.0

# cfg entries: output channels of a 3x3 conv, (channels, kernel) for another kernel size,
# "M" for a 2x2 max pool, "LRN" for local response normalisation.
Entry = int | tuple[int, int] | str
CFGS: dict[str, list[Entry]] = {
    "vgg11_lrn": [64, "LRN", "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16_c": [64, 64, "M", 128, 128, "M", 256, 256, (256, 1), "M",
                512, 512, (512, 1), "M", 512, 512, (512, 1), "M"],
}

# The paper's name for each configuration (Table 1); _bn models are torchvision's additions.
PAPER_NAMES = {
    "vgg11": "A", "vgg11_lrn": "A-LRN", "vgg13": "B", "vgg16_c": "C", "vgg16": "D", "vgg19": "E",
    "vgg11_bn": "A + BN", "vgg13_bn": "B + BN", "vgg16_bn": "D + BN", "vgg19_bn": "E + BN",
}


def build_vgg(name: str) -> VGG:
    """A VGG of configuration ``name`` (see ``ALL_ARCHITECTURES``) without trained weights.

    Call it under ``torch.device("meta")`` when only the structure is needed.
    """
    if name in ARCHITECTURES:
        return torchvision.models.get_model(name, weights=None)
    if name in CFGS:
        # init_weights=False: on the meta device there is nothing to initialise, and these models
        # have no trained weights to be replaced by.
        return VGG(make_features(CFGS[name]), num_classes=1000, init_weights=False)
    raise VggfeatError(f"unknown model {name!r}; choose one of {', '.join(ALL_ARCHITECTURES)}")


def make_features(cfg: list[Entry]) -> nn.Sequential:
    """torchvision's ``make_layers`` with two additions: other kernel sizes, and LRN layers."""
    layers: list[nn.Module] = []
    in_channels = 3
    for entry in cfg:
        if entry == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        elif entry == "LRN":
            layers.append(nn.LocalResponseNorm(LRN_SIZE, alpha=LRN_ALPHA * LRN_SIZE, beta=LRN_BETA, k=LRN_K))
        else:
            channels, kernel = entry if isinstance(entry, tuple) else (entry, 3)
            # padding keeps the spatial size, as all of the paper's conv layers do (Sec. 2.1).
            layers += [nn.Conv2d(in_channels, channels, kernel, padding=kernel // 2), nn.ReLU(inplace=True)]
            in_channels = channels
    return nn.Sequential(*layers)
