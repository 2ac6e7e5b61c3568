"""vggfeat: very deep VGG descriptors without fine-tuning, stored in HDF5."""

from .discover import ImageSet, find_images, read_file_list
from .errors import ImageError, VggfeatError
from .extractor import Extractor
from .job import ExtractionJob
from .multidevice import MultiDeviceJob
from ._version import __version__
from .network import DenseVGG, load_network

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
