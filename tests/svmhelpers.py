"""Helpers for the SVM tests: synthetic features files in vggfeat's schema, and image folders whose
classes differ visibly (so that even a random-weight VGG separates them).

Plain functions, no pytest magic, so any test file can ``from svmhelpers import ...``.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

CONFIG = {
    "model": "vgg16", "weights": "random", "weights_sha256": "ab" * 32, "weights_seed": 0, "layer": "fc7",
    "pooling": "avg", "scales": [224], "aggregate": "mean", "flip": False, "precision": "fp32", "dim": 8,
    "max_pixels": 178956970, "min_side": 32, "preprocessing": {"resize": "bilinear"}, "dtype": "float32",
}


def write_features(path, X, paths, labels, classes, config: dict | None = None, complete: bool = True,
                   chunk_rows: int | None = None, failed: dict[str, str] | None = None) -> Path:
    """A features file with the schema of ``vggfeat extract`` (without /sizes contents).

    ``chunk_rows``: store /features in chunks of that many full rows, as ``vggfeat extract`` does
    (by default it is contiguous). ``failed``: the images it could not describe, path to reason.
    """
    path = Path(path)
    X = np.asarray(X, dtype=np.float32)
    config = {**CONFIG, "dim": X.shape[1], **(config or {})}
    string = h5py.string_dtype("utf-8")
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=X, chunks=(chunk_rows, X.shape[1]) if chunk_rows else None)
        f.create_dataset("paths", data=list(paths), dtype=string)
        f["labels"] = np.asarray(labels, dtype=np.int32)
        f.create_dataset("classes", data=list(classes), dtype=string)
        f["sizes"] = np.full((len(X), 2), 224, dtype=np.int32)
        failed = dict(sorted((failed or {}).items()))
        f.create_dataset("failed/paths", data=list(failed), shape=(len(failed),), dtype=string)
        f.create_dataset("failed/errors", data=list(failed.values()), shape=(len(failed),), dtype=string)
        f.attrs["config"] = json.dumps(config, sort_keys=True)
        f.attrs["complete"] = complete
        f.attrs["format_version"] = 1
    return path


def blobs(classes: int = 3, per_class: int = 10, dim: int = 8, seed: int = 0, spread: float = 0.5):
    """Non-negative descriptors in well separated clusters: (X, labels, paths, class names)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 3, size=(classes, dim))
    labels = np.repeat(np.arange(classes), per_class)
    X = np.abs(centres[labels] + spread * rng.standard_normal((len(labels), dim)))
    names = [f"class{k}" for k in range(classes)]
    paths = [f"{names[k]}/{i:03d}.png" for i, k in enumerate(labels)]
    return X, labels, paths, names


def set_attr(path, key: str, value) -> None:
    with h5py.File(path, "r+") as f:
        f.attrs[key] = value


def misplace_a_chunk(path, name: str) -> None:
    """Damage ``path`` so that a chunk of its chunked dataset ``name`` lies past the file's end:
    the file opens, and reading that data raises h5py's OSError "Can't synchronously read data
    (addr overflow ...)", of no errno (a flipped bit in HDF5's chunk index; a contiguous dataset's
    address is checked as it is opened). The chunk: the first whose address is found once in the file."""
    data = Path(path).read_bytes()
    with h5py.File(path, "r") as f:
        chunks = f[name].id
        addresses = [chunks.get_chunk_info(i).byte_offset.to_bytes(8, "little") for i in range(chunks.get_num_chunks())]
    address = next(address for address in addresses if data.count(address) == 1)
    Path(path).write_bytes(data.replace(address, (len(data) + 10**6).to_bytes(8, "little")))


def edit_config(path, **changes) -> None:
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["config"])
        config.update(changes)
        f.attrs["config"] = json.dumps(config, sort_keys=True)


# --------------------------------------------------------------------------- images

# Three looks that differ in colour and texture; each image varies in phase, tint and noise.
LOOKS = ("red_stripes", "green_checks", "blue_rings")


def write_look(path, look: str, seed: int, size: int = 224) -> None:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi)
    if look == "red_stripes":
        pattern, colour = np.sin(y / 6 + phase), (200, 50, 40)
    elif look == "green_checks":
        pattern, colour = np.sign(np.sin(x / 12 + phase) * np.sin(y / 12 + phase)), (40, 190, 70)
    else:
        r = np.hypot(x - size / 2 + rng.uniform(-20, 20), y - size / 2 + rng.uniform(-20, 20))
        pattern, colour = np.sin(r / 5 + phase), (50, 70, 210)
    base = np.array(colour, dtype=np.float32) * rng.uniform(0.8, 1.1)
    picture = base[None, None, :] * (0.65 + 0.35 * pattern[..., None]) + rng.normal(0, 8, (size, size, 3))
    Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8)).save(path)


def write_look_folder(root, per_class: int, start_seed: int = 0) -> list[str]:
    """``root/<look>/imgNN.png``, ``per_class`` images per look; returns the relative paths."""
    root = Path(root)
    written = []
    for k, look in enumerate(LOOKS):
        (root / look).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            write_look(root / look / f"img{i:02d}.png", look, seed=start_seed + 100 * k + i)
            written.append(f"{look}/img{i:02d}.png")
    return written
