"""Whitening: PCA-whitening learned on a set of descriptors, the standard retrieval post-processing.

Jégou & Chum (2012); used on MAC/R-MAC/GeM by Tolias et al. (2016) and Radenović et al. (2018).
Descriptors are L2-normalised, centred on the fitting set's mean, projected on its principal
axes, each axis divided by the square root of its variance (optionally keeping only the first
``dim`` axes), and L2-normalised again, so that inner products between results are cosines in a
space where every kept direction carries the same variance.

Stored as plain arrays in HDF5 (``/mean``, ``/projection``, ``/eigenvalues``) with the extraction
configuration of the descriptors it was fitted on, so that it is only ever applied to descriptors
made the same way, and a checksum of the arrays, so that one changed since is refused. Nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np
from scipy.linalg import blas

from .errors import InvalidInput, VggfeatError, dense_array
from .features import config_differences, finite_blocks, not_finite_rows
from .files import open_h5, reading_hdf5, written_atomically
from .store import WHITENING_FORMAT, check_written, kind_of, open_features_file

if TYPE_CHECKING:  # torch only where tensors come in: whitening a file's descriptors, or 'vggfeat info', needs none
    import torch
    from sklearn.utils import Tags

# Eigenvalues below this fraction of the largest are raised to it: directions with (almost) no
# variance in the fitting set would otherwise be scaled up without bound.
EIGENVALUE_FLOOR = 1e-8
# Descriptors per block of a fit, in bytes of float64: the covariance of 1M x 4096 fc7 descriptors
# is fitted in 64 MiB pieces (2048 rows, enough for each product to outweigh adding its D x D
# result), where the whole set would take 32 GiB.
_BLOCK_BYTES = 64 * 2**20


def l2_normalize(X: np.ndarray, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """Rows of ``X`` scaled to unit length (zero rows stay zero), as ``dtype``."""
    X = np.asarray(X, dtype=dtype)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.maximum(norms, 1e-12)


class PCAWhitening:
    """PCA-whitening with optional dimensionality reduction, a scikit-learn transformer (``fit``,
    ``transform``, ``fit_transform``; ``clone``, ``get_params``, a Pipeline's step, ``check_is_fitted``,
    ``check_estimator``), without importing scikit-learn (``vggfeat info`` and ``--help`` load this
    module): scikit-learn is imported only where it asks (its tags) or a NotFitted is raised.

    Args:
        dim: output dimension; None keeps every axis the fitting data supports (at most
            min(D, N - 1)).
        normalize_input: L2-normalise descriptors before fitting and transforming (the recipe's).

    After :meth:`fit`: ``mean_`` [D], ``projection_`` [dim, D] (axes scaled by eigenvalue^-1/2),
    ``eigenvalues_`` [dim], ``config_`` (the extraction configuration, when fitted from a file),
    ``n_features_in_`` (D, as scikit-learn's estimators name it).
    """

    def __init__(self, dim: int | None = None, normalize_input: bool = True) -> None:
        self.dim = dim
        self.normalize_input = normalize_input

    def get_params(self, deep: bool = True) -> dict:
        """The constructor's parameters, as scikit-learn's ``clone`` and searches take them."""
        return {"dim": self.dim, "normalize_input": self.normalize_input}

    def __repr__(self) -> str:  # as scikit-learn's: the parameters not at their defaults
        defaults = PCAWhitening().get_params()
        changed = [f"{name}={value!r}" for name, value in self.get_params().items() if value != defaults[name]]
        return f"PCAWhitening({', '.join(changed)})"

    def set_params(self, **params: object) -> PCAWhitening:
        for name, value in params.items():
            if name not in self.get_params():
                raise InvalidInput(f"PCAWhitening has no parameter {name!r}; it has {', '.join(self.get_params())}")
            setattr(self, name, value)
        return self

    def fit_transform(self, X: np.ndarray, y: object = None, *, config: dict | None = None) -> np.ndarray:
        return self.fit(X, y, config=config).transform(X)

    def fit(self, X: np.ndarray, y: object = None, *, config: dict | None = None) -> PCAWhitening:
        """Learn the whitening from descriptors ``X`` [N, D] (``y``, a Pipeline's labels, is not
        used); ``config``: how they were extracted."""
        if isinstance(y, dict):  # fit(X, config), as it was called before y came: the config would be lost
            raise InvalidInput("PCAWhitening.fit takes the extraction configuration by keyword: fit(X, config=...)")
        X = dense_array(X)
        if X.ndim != 2:
            raise InvalidInput(f"whitening needs descriptors [N, D], got shape {X.shape}")
        step = _block_rows(X.shape[1])
        return self.fit_blocks((X[start : start + step] for start in range(0, len(X), step)), *X.shape, config=config)

    def fit_blocks(self, blocks: Iterable[np.ndarray], rows: int, dim: int, config: dict | None = None) -> PCAWhitening:
        """As :meth:`fit`, from ``rows`` descriptors of ``dim`` given a block at a time (a file's,
        read in blocks): the host holds one block and a D x D covariance, never all N x D."""
        # (n_samples=, 0 feature(s): worded as scikit-learn's refusals, which its estimator checks look for)
        if rows < 2:
            raise InvalidInput(f"whitening needs at least 2 descriptors, got n_samples={rows}")
        if dim < 1:
            raise InvalidInput(f"whitening was given descriptors of 0 feature(s) (shape=({rows}, {dim})) while a "
                               "minimum of 1 is required: there is nothing to whiten")
        # 2.7 was 2, "3" was 3, "abc" a float's ValueError; normalize_input="no" was true
        if self.dim is not None and (isinstance(self.dim, bool) or not isinstance(self.dim, (int, float, np.number))
                                     or not float(self.dim).is_integer()):
            raise InvalidInput(f"whitening dim must be a whole number, got {self.dim!r}")
        if not isinstance(self.normalize_input, (bool, np.bool_)):
            raise InvalidInput(f"normalize_input is True or False, got {self.normalize_input!r}")
        rank = min(dim, rows - 1)  # centring removes one degree of freedom
        kept = rank if self.dim is None else int(self.dim)
        if kept < 1 or kept > dim:
            raise InvalidInput(f"whitening dim must be between 1 and the descriptor dimension {dim}, got {kept}")
        if kept > rank:
            raise InvalidInput(f"whitening to {kept} dimensions needs at least {kept + 1} descriptors, got {rows}")
        if kept == rows - 1:
            # N centred points span N - 1 directions: each scaled to unit variance, the points come
            # out as a regular simplex, every pair at the same cosine.
            warnings.warn(f"whitening keeps {kept} dimensions from {rows} descriptors: whitened, those descriptors are "
                          f"all equally far apart (a cosine of -1/{kept} between any two), so a search among them ranks "
                          f"nothing; fit it on many more descriptors than dimensions (a larger collection), or keep "
                          f"fewer dimensions (--dim well below {rows})", stacklevel=2)
        moments = _Moments(dim)
        for block in blocks:
            block = np.asarray(block, dtype=np.float64)
            if block.ndim != 2 or block.shape[1] != dim:
                raise InvalidInput(f"whitening of {dim}-d descriptors was given a block of shape {block.shape}")
            if not np.isfinite(block).all():
                raise InvalidInput("descriptors hold NaN or infinite values; drop those rows first")
            moments.add(l2_normalize(block, np.float64) if self.normalize_input else block)
        if moments.rows != rows:
            raise InvalidInput(f"whitening was given {moments.rows} descriptors, expecting {rows}")
        mean, covariance = moments.mean_and_covariance()
        # The covariance's eigenvectors, largest first (eigh sorts ascending).
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
        order = np.argsort(eigenvalues)[::-1][:kept]
        eigenvalues = np.maximum(eigenvalues[order], EIGENVALUE_FLOOR * max(float(eigenvalues.max()), 1e-30))
        self.mean_ = mean.astype(np.float32)
        self.eigenvalues_ = eigenvalues.astype(np.float32)
        self.projection_ = (eigenvectors[:, order] / np.sqrt(eigenvalues)).T.astype(np.float32)
        self.config_ = dict(config) if config else {}
        self.n_samples_, self.n_features_in_ = rows, dim
        return self

    @property
    def input_dim(self) -> int:
        self._check_fitted()
        return self.projection_.shape[1]

    @property
    def output_dim(self) -> int:
        self._check_fitted()
        return self.projection_.shape[0]

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Whitened, L2-normalised descriptors [N, dim] float32."""
        self._check_fitted()
        X = np.asarray(dense_array(X), dtype=np.float32)
        if X.ndim != 2:  # 1-d: one descriptor, most likely (the hint worded as scikit-learn's, its checks ask for it)
            hint = ". Reshape your data: X.reshape(1, -1) if it is a single descriptor" if X.ndim == 1 else ""
            raise InvalidInput(f"whitening was fitted on {self.input_dim}-d descriptors, got shape {X.shape}{hint}")
        if X.shape[1] != self.input_dim:  # (worded as scikit-learn's estimators say it, as its checks ask)
            raise InvalidInput(f"X has {X.shape[1]} features, but PCAWhitening is expecting {self.input_dim} features "
                               f"as input: it was fitted on {self.input_dim}-d descriptors")
        damaged = not_finite_rows(X)
        if len(damaged):  # as fit refuses them: whitened, NaN everywhere, silently
            raise InvalidInput(f"descriptor {damaged[0]} holds NaN or infinite values; drop those rows first")
        if self.normalize_input:
            X = l2_normalize(X)
        whitened = l2_normalize((X - self.mean_) @ self.projection_.T)
        # A descriptor of zeros (nothing the layer responded to) stays one, as without whitening
        # (l2_normalize): centred, it would be the unit vector of -mean, close to other such images.
        whitened[~X.any(axis=1)] = 0
        return whitened

    def transform_tensor(self, X: torch.Tensor) -> torch.Tensor:
        """As :meth:`transform` without the final normalisation, on a tensor's device (R-MAC regions)."""
        import torch  # already imported by whoever holds a tensor

        self._check_fitted()
        mean = torch.as_tensor(self.mean_, device=X.device, dtype=X.dtype)
        projection = torch.as_tensor(self.projection_, device=X.device, dtype=X.dtype)
        if self.normalize_input:
            X = torch.nn.functional.normalize(X, dim=-1)
        return (X - mean) @ projection.T

    def check_config(self, config: dict, what: str = "these descriptors") -> None:
        """Refuse descriptors extracted differently from those the whitening was fitted on."""
        if not self.config_:
            return
        differences = config_differences(self.config_, config)
        if differences:
            raise VggfeatError(f"the whitening was fitted on descriptors extracted differently from {what}: "
                               f"{'; '.join(differences)}")

    # ------------------------------------------------------------------- plain HDF5

    def save(self, path: str | os.PathLike, provenance: dict | None = None) -> None:
        """Write to an HDF5 file of its own (see :meth:`write`), whole or not at all; ``provenance``:
        attributes to record besides (how it was made, see :mod:`vggfeat.rerun`). A file of
        another kind than a whitening is not replaced (:func:`~vggfeat.store.check_written`)."""
        check_written(path, WHITENING_FORMAT)
        with written_atomically(path) as temporary, open_h5(temporary, "w") as f:
            self.write(f)
            f.attrs.update(provenance or {})

    def write(self, group: h5py.Group) -> None:
        """Write the arrays and parameters into an HDF5 group (a file, or a group of an index file)."""
        self._check_fitted()
        group["mean"] = self.mean_
        group["projection"] = self.projection_
        group["eigenvalues"] = self.eigenvalues_
        group.attrs["checksum"] = _checksum([group[name][:] for name in _ARRAYS], self.normalize_input)
        group.attrs["format"] = WHITENING_FORMAT
        group.attrs["normalize_input"] = self.normalize_input
        group.attrs["n_samples"] = self.n_samples_
        group.attrs["config"] = json.dumps(self.config_, sort_keys=True)

    @classmethod
    def load(cls, path: str | os.PathLike) -> PCAWhitening:
        """Read a file written by :meth:`save`."""
        path = Path(path)
        with reading_hdf5(path, "whitening") as f:
            return cls.read(f, str(path))

    @classmethod
    def read(cls, group: h5py.Group, name: str = "whitening") -> PCAWhitening:
        """Read a group written by :meth:`write`; ``name`` names it in errors."""
        if group.attrs.get("format") != WHITENING_FORMAT or any(key not in group for key in _ARRAYS):
            raise VggfeatError(f"{name} is not a vggfeat whitening (made by 'vggfeat whiten fit'){kind_of(group)}")
        whitening = cls(normalize_input=bool(group.attrs["normalize_input"]))
        arrays = [group[name][:] for name in _ARRAYS]
        # Files written before the checksum was added have none: read as they are.
        if "checksum" in group.attrs and group.attrs["checksum"] != _checksum(arrays, whitening.normalize_input):
            raise VggfeatError(f"{name} was modified or is damaged (checksum mismatch); make it again ('vggfeat whiten "
                               "fit', or 'vggfeat index' for an index's)")
        whitening.mean_, whitening.projection_, whitening.eigenvalues_ = (array.astype(np.float32) for array in arrays)
        whitening.dim = whitening.projection_.shape[0]
        whitening.n_samples_ = int(group.attrs.get("n_samples", 0))
        whitening.n_features_in_ = whitening.projection_.shape[1]
        whitening.config_ = json.loads(group.attrs.get("config", "{}"))
        if whitening.projection_.shape[1] != whitening.mean_.shape[0]:
            raise VggfeatError(f"{name} is damaged: /projection and /mean disagree in dimension")
        if not all(np.isfinite(array).all() for array in arrays):  # every vector whitened would be NaN, its mAP made up
            raise VggfeatError(f"{name} is damaged: it holds NaN or infinite values")
        return whitening

    def __sklearn_is_fitted__(self) -> bool:
        """Whether :meth:`fit` (or :meth:`read`) has run: for scikit-learn's ``check_is_fitted``."""
        return hasattr(self, "projection_")

    def __sklearn_tags__(self) -> Tags:
        """What scikit-learn's checks and meta-estimators take this for (BaseEstimator's and
        TransformerMixin's tags, which it does not inherit): a transformer of dense, finite
        descriptors, needing no labels, whose output is float32 whatever its input."""
        from sklearn.utils import Tags, TargetTags, TransformerTags  # asked by scikit-learn alone, already imported

        return Tags(estimator_type=None, target_tags=TargetTags(required=False),
                    transformer_tags=TransformerTags(preserves_dtype=["float32"]))

    def _check_fitted(self) -> None:
        if not self.__sklearn_is_fitted__():
            from .errors import NotFitted  # imports scikit-learn, which this module does not otherwise need

            raise NotFitted("this PCAWhitening is not fitted yet; call fit(X) first")


def whitening_summary(path: str | os.PathLike) -> dict:
    """What a whitening file holds, read from its attributes and shapes: for ``vggfeat info``."""
    with reading_hdf5(Path(path), "whitening") as f:
        if f.attrs.get("format") != WHITENING_FORMAT or "projection" not in f:
            raise VggfeatError(f"{path} is not a vggfeat whitening (made by 'vggfeat whiten fit'){kind_of(f)}")
        output_dim, input_dim = f["projection"].shape
        return {"format": WHITENING_FORMAT, "path": str(path), "input_dim": input_dim, "output_dim": output_dim,
                "n_samples": int(f.attrs.get("n_samples", 0)), "normalize_input": bool(f.attrs["normalize_input"]),
                "config": json.loads(f.attrs.get("config", "{}")), "command": str(f.attrs.get("command", ""))}


class _Moments:
    """The mean and covariance of rows added a block at a time, in float64. Sums are taken about
    the first block's mean, so that a mean far from zero costs no precision in the covariance.
    Each block's X^T X is BLAS's symmetric rank-k update (dsyrk) into the upper triangle, in
    place: half the multiply-adds of a matrix product, and no D x D temporary per block."""

    def __init__(self, dim: int) -> None:
        self.rows, self.shift = 0, None
        self.sum, self.upper = np.zeros(dim), np.zeros((dim, dim), order="F")

    def add(self, block: np.ndarray) -> None:
        if not len(block):
            return
        if self.shift is None:
            self.shift = block.mean(axis=0)
        centred = block - self.shift  # C-ordered: its transpose is the Fortran matrix dsyrk reads, uncopied
        self.rows += len(block)
        self.sum += centred.sum(axis=0)
        self.upper = blas.dsyrk(1.0, centred.T, beta=1.0, c=self.upper, trans=0, lower=0, overwrite_c=1)

    def mean_and_covariance(self) -> tuple[np.ndarray, np.ndarray]:
        offset = self.sum / self.rows
        upper = np.triu(self.upper)
        scatter = upper + np.triu(upper, 1).T
        return self.shift + offset, scatter / self.rows - np.outer(offset, offset)


def _block_rows(dim: int) -> int:
    """Rows per block of a whitening's fit: a float64 block of about _BLOCK_BYTES."""
    return max(1, _BLOCK_BYTES // (8 * max(1, dim)))


_ARRAYS = ("mean", "projection", "eigenvalues")  # a whitening's datasets, in its checksum's order


def _checksum(arrays: Sequence[np.ndarray], normalize_input: bool) -> str:
    """SHA-256 over a whitening's arrays as stored (dtype, shape, bytes) and whether it normalises
    its input: what a damaged or edited file would change (16 MB for 4096 -> 512: 7 ms here, RESULTS.md)."""
    digest = hashlib.sha256(f"normalize_input={bool(normalize_input)};".encode())
    for array in arrays:
        digest.update(f"{array.dtype}|{array.shape}|".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def fit_whitening(features: str | os.PathLike, output: str | os.PathLike, dim: int | None = None,
                  progress: Callable[[int], object] | None = None, provenance: dict | None = None) -> PCAWhitening:
    """Fit a :class:`PCAWhitening` on every row of a features file, read in blocks (host memory
    does not grow with the file: neither its descriptors nor its paths are read whole), and save
    it to ``output`` (with the attributes ``provenance`` besides); ``progress(rows)`` after each block."""
    check_written(output, WHITENING_FORMAT, [features])  # before the work
    with open_features_file(Path(features), required=("features",)) as f:
        descriptors, config = f["features"], json.loads(f.attrs["config"])
        rows, width = descriptors.shape
        step = _block_rows(width)

        def blocks() -> Iterator[np.ndarray]:
            for block in finite_blocks(f, features, step):
                yield block
                if progress:
                    progress(len(block))

        whitening = PCAWhitening(dim=dim).fit_blocks(blocks(), rows, width, config=config)
    whitening.save(output, provenance)
    return whitening
