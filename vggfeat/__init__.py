"""vggfeat: very deep VGG descriptors without fine-tuning, stored in HDF5."""

from __future__ import annotations

import importlib
import importlib.util

from ._version import __version__

# The public names are imported on first use (PEP 562), so that ``import vggfeat``, and with it
# every ``vggfeat`` command that reads files only, does not pay torch's import (~2 s), and the
# command's entry point (:mod:`vggfeat._entry`) handles Ctrl-C before NumPy has loaded.
_LAZY_NAMES = {
    "DenseVGG": "network",
    "ExtractionJob": "job",
    "Extractor": "extractor",
    "ImageError": "errors",
    "ImageSet": "discover",
    "MultiDeviceJob": "multidevice",
    "VggfeatError": "errors",
    "find_images": "discover",
    "load_network": "network",
    "read_file_list": "discover",
}

__all__ = [
    "DenseVGG",
    "ExtractionJob",
    "Extractor",
    "ImageError",
    "ImageSet",
    "MultiDeviceJob",
    "VggfeatError",
    "find_images",
    "load_network",
    "read_file_list",
    "__version__",
]


def __getattr__(name: str) -> object:
    if name not in _LAZY_NAMES:
        # A module of the package (vggfeat.svm, vggfeat.update, ...), imported on first use as
        # scipy's are: the README's ``vggfeat.update.OutputUpdate`` after a plain ``import vggfeat``.
        if name.isidentifier() and not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}"):
            return importlib.import_module(f".{name}", __name__)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
