"""Network: torchvision's VGG made fully convolutional, as in the paper's dense evaluation (Sec. 3.2).

fc6 becomes a 7x7 convolution, fc7 and fc8 1x1 convolutions holding the very same weights, so the
network applies to a whole image of any size with smallest side >= 224 and yields a spatial map of
fc7 vectors (or fc8 class scores), one per 224x224 window (stride 32).

Batches may hold images of different sizes, zero-padded to a common shape. Padding alone would
change the numbers (a 3x3 convolution at the image edge would see activations of the padded area
instead of zeros, and pooling would include padded positions), so before every convolution the
padded area is forced back to zero and the valid size of each image is tracked through the pools.
A padded image then gives exactly the map it gives on its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models import VGG

from .weights import WeightsInfo, load_vgg

# Smallest input side for which pool5 is at least 7x7, the window of fc6.
MIN_INPUT_SIDE = 224


class DenseVGG(nn.Module):
    """A VGG whose fully connected layers fc6, fc7 and fc8 run as convolutions.

    Layer names follow the paper's blocks: ``conv1_1`` ... ``conv5_3`` (after ReLU), ``pool1`` ...
    ``pool5``, ``fc6`` and ``fc7`` (after ReLU), and ``fc8`` (class scores, before softmax).
    """

    def __init__(self, vgg: VGG, arch: str, weights: WeightsInfo) -> None:
        super().__init__()
        self.arch = arch
        self.weights = weights
        self.features = vgg.features
        fc6, fc7, fc8 = vgg.classifier[0], vgg.classifier[3], vgg.classifier[6]
        self.fc6 = _as_conv(fc6, in_channels=512, kernel_size=7)
        self.fc7 = _as_conv(fc7, in_channels=fc7.in_features, kernel_size=1)
        self.fc8 = _as_conv(fc8, in_channels=fc8.in_features, kernel_size=1)
        self.layer_dims: dict[str, int] = {}
        self._stops: dict[str, int] = {}  # index into self.features after which a layer is complete
        block, conv, channels = 1, 0, 0
        for index, module in enumerate(self.features):
            if isinstance(module, nn.Conv2d):
                conv, channels = conv + 1, module.out_channels
            elif isinstance(module, nn.ReLU):
                self._stops[f"conv{block}_{conv}"] = index
                self.layer_dims[f"conv{block}_{conv}"] = channels
            elif isinstance(module, nn.MaxPool2d):
                self._stops[f"pool{block}"] = index
                self.layer_dims[f"pool{block}"] = channels
                block, conv = block + 1, 0
        self.layer_dims["fc6"] = self.fc6.out_channels
        self.layer_dims["fc7"] = self.fc7.out_channels
        self.layer_dims["fc8"] = self.fc8.out_channels
        self.eval().requires_grad_(False)

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(self.layer_dims)

    def forward(
        self, images: torch.Tensor, layer: str = "fc7", sizes: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run ``images`` [B, 3, H, W] up to ``layer``; return its map and each image's valid size.

        ``sizes`` [B, 2] gives the (height, width) of each image inside a zero-padded batch; None
        means every image fills the batch (no masking needed). The returned sizes say which part
        of the returned map belongs to each image.
        """
        stop = self._stops.get(layer, len(self.features) - 1)
        x = images
        for index, module in enumerate(self.features[: stop + 1]):
            if sizes is not None and isinstance(module, nn.Conv2d):
                x = x * valid_mask(sizes, x.shape[-2:], x.dtype)
            x = module(x)
            if sizes is not None and isinstance(module, nn.MaxPool2d):
                sizes = sizes // 2  # floor, as MaxPool2d(2, 2) drops an odd last row or column
        if layer in self._stops:
            return x, sizes
        # Only the batch's shape is checked: reading ``sizes`` would make the host wait for the GPU.
        # Callers keep every image >= MIN_INPUT_SIDE (the Extractor refuses smaller scales for fc layers).
        if min(x.shape[-2:]) < 7:
            raise ValueError(f"fc6 needs a pool5 map of at least 7x7; inputs must be >= {MIN_INPUT_SIDE} px")
        if sizes is not None:
            x = x * valid_mask(sizes, x.shape[-2:], x.dtype)
            sizes = sizes - 6  # a 7x7 window fits at h - 6 positions
        x = F.relu(self.fc6(x))
        if layer == "fc6":
            return x, sizes
        x = F.relu(self.fc7(x))
        if layer == "fc7":
            return x, sizes
        return self.fc8(x), sizes


    def map_size(self, layer: str, height: int, width: int) -> tuple[int, int]:
        """Valid (height, width) of ``layer``'s map for a ``height`` x ``width`` input.

        The size arithmetic of :meth:`forward` done on the host, so that pooling can know each
        image's valid area without reading it back from the GPU.
        """
        stop = self._stops.get(layer, len(self.features) - 1)
        pools = sum(isinstance(module, nn.MaxPool2d) for module in self.features[: stop + 1])
        height, width = height >> pools, width >> pools  # repeated floor halving
        return (height, width) if layer in self._stops else (height - 6, width - 6)


    def peak_values_per_pixel(self, layer: str) -> float:
        """Most activation values alive at once per input pixel on the way to ``layer``: a
        convolution's input and output (from VGG13 on, conv1_2's 64 + 64 channels at full size).

        Batches are sized from it: memory grows with the pixels of a batch, not its image count.
        """
        stop = self._stops.get(layer, len(self.features) - 1)
        channels, area, peak = 3, 1.0, 0.0
        for module in self.features[: stop + 1]:
            if isinstance(module, nn.Conv2d):
                peak = max(peak, (channels + module.out_channels) * area)
                channels = module.out_channels
            elif isinstance(module, nn.MaxPool2d):
                area /= 4
        if layer not in self._stops:  # fc6-fc8 run on the pool5 map
            peak = max(peak, (channels + self.fc6.out_channels + self.fc7.out_channels) * area)
        return peak


def load_network(model: str = "vgg16", weights: str = "imagenet", seed: int = 0) -> DenseVGG:
    """torchvision's ``model`` with the given weights (see :func:`vggfeat.weights.load_vgg`), made dense."""
    vgg, info = load_vgg(model, weights, seed)
    return DenseVGG(vgg, model, info)


def layer_dims(model: str) -> dict[str, int]:
    """Layer names of ``model`` and their channels, without building its weights."""
    with torch.device("meta"):
        vgg = torchvision.models.get_model(model, weights=None)
    return DenseVGG(vgg, model, WeightsInfo("none", "")).layer_dims


def valid_mask(sizes: torch.Tensor, shape: torch.Size | tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, H, W] mask: 1 inside each image's valid (height, width), 0 in its padding."""
    height, width = shape
    rows = torch.arange(height, device=sizes.device)[None, :, None] < sizes[:, 0, None, None]
    cols = torch.arange(width, device=sizes.device)[None, None, :] < sizes[:, 1, None, None]
    return (rows & cols).unsqueeze(1).to(dtype)


def _as_conv(linear: nn.Linear, in_channels: int, kernel_size: int) -> nn.Conv2d:
    # torchvision flattens pool5 as (channel, row, column): the Linear weight reshapes to a
    # kernel of the same layout, sharing storage with the Linear layer.
    conv = nn.Conv2d(in_channels, linear.out_features, kernel_size, device="meta")  # no throwaway init
    conv.weight = nn.Parameter(
        linear.weight.detach().view(linear.out_features, in_channels, kernel_size, kernel_size),
        requires_grad=False,
    )
    conv.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)
    return conv
