"""Shared fixtures. Networks are built once per session: random VGG initialisation takes 1-3 s."""

import collections

import pytest

import vggfeat.extractor
from imagefiles import write_rgb
from vggfeat.weights import load_vgg

# Random networks kept for the session's Extractors (about 0.5 GB each).
RANDOM_NETWORKS_KEPT = 4


@pytest.fixture(autouse=True, scope="session")
def random_networks_built_once():
    """An Extractor (and so the CLI in this process) given ``weights="random"`` reuses the network
    of that architecture and seed that the session built before: initialising 130-140 million
    parameters takes 1.9 s on a 2-core machine, and the CLI's tests build hundreds. Extractors do
    not change their network (a half-precision one runs a cast copy), as this relies on."""
    real, built = vggfeat.extractor.load_network, collections.OrderedDict()

    def load(model, weights="imagenet", seed=0):
        if str(weights) != "random":
            return real(model, weights, seed)
        key = (model, int(seed))
        if key not in built:
            built[key] = real(model, weights, seed)
            while len(built) > RANDOM_NETWORKS_KEPT:
                built.popitem(last=False)
        built.move_to_end(key)
        return built[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vggfeat.extractor, "load_network", load)
        yield


@pytest.fixture(scope="session")
def random_vgg16(random_networks_built_once):
    """torchvision's VGG16 with seeded random weights, made dense (seed 0): what an Extractor, and
    so the CLI's ``--weights random --seed 0``, is given in this process (or, if the session has
    built four others since, the same weights built again)."""
    return vggfeat.extractor.load_network("vgg16", "random", 0)


@pytest.fixture(scope="session")
def reference_vgg16():
    """torchvision's VGG16 (nn.Linear classifier) with the same seeded weights as ``random_vgg16``."""
    vgg, _ = load_vgg("vgg16", "random", 0)
    return vgg


@pytest.fixture(scope="session")
def image_224(tmp_path_factory):
    """A 224x224 PNG: at Q=224 it is one window of the dense network, no resize."""
    path = tmp_path_factory.mktemp("net") / "square.png"
    write_rgb(path, 224, 224, seed=11)
    return path
