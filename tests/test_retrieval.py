"""Whitening, index (NumPy and FAISS), search, retrieval metrics, export and montage, on synthetic
descriptors written in the features file schema (no network needed)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from imagefiles import write_rgb
from runhelpers import Killed, error_line, killed_after_renaming, needs_extended_attributes, run_main
from svmhelpers import misplace_a_chunk
from vggfeat.errors import VggfeatError
from vggfeat.export import export
import vggfeat.index
from vggfeat.index import VectorIndex, build_index, exact_search, faiss_available, index_features
from vggfeat.montage import draw_montage, montage_size
from vggfeat.rerun import recorded_in_file
from vggfeat.retrieval import compute_ap, evaluate_ground_truth, evaluate_labels, precision_at, read_ground_truth
from vggfeat.search import search
import vggfeat.export
import vggfeat.features
from vggfeat.features import FeatureFile
import vggfeat.whitening
from vggfeat.whitening import PCAWhitening, fit_whitening, l2_normalize

needs_faiss = pytest.mark.skipif(not faiss_available(), reason="faiss not installed (pip install faiss-cpu)")
CONFIG = {"model": "vgg16", "weights_sha256": "abc", "layer": "conv5_3", "pooling": "rmac", "scales": [224],
          "aggregate": "mean", "flip": False, "preprocessing": {}, "dim": 16}


def clustered(n_classes=4, per_class=6, dim=16, seed=0, spread=1.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim)) * 3
    labels = np.repeat(np.arange(n_classes), per_class)
    X = np.abs(centres[labels] + spread * rng.normal(size=(len(labels), dim)))
    return X.astype(np.float32), labels


def write_features(path, X, labels, classes=None, config=CONFIG, root="", failed=()):
    """A descriptor file of ``X``; ``failed``: (path, reason, label) of images that could not be described."""
    classes = classes or [f"c{i}" for i in range(max(labels) + 1)]
    string = h5py.string_dtype("utf-8")
    with h5py.File(path, "w") as f:
        f["features"] = X
        f.create_dataset("paths", data=[f"{classes[y] if y >= 0 else 'none'}/{i:03d}.jpg" for i, y in enumerate(labels)], dtype=string)
        f["labels"] = np.asarray(labels, dtype=np.int32)
        f.create_dataset("classes", data=classes, dtype=string)
        f["sizes"] = np.zeros((len(X), 2), dtype=np.int32)
        failed_paths, reasons, failed_labels = zip(*failed) if failed else ((), (), ())
        f.create_dataset("failed/paths", data=list(failed_paths), shape=(len(failed),), dtype=string)
        f.create_dataset("failed/errors", data=list(reasons), shape=(len(failed),), dtype=string)
        f.create_dataset("failed/labels", data=np.asarray(failed_labels, dtype=np.int32), shape=(len(failed),))
        f.attrs["config"] = json.dumps({**config, "dim": X.shape[1]})
        f.attrs["complete"] = True
        f.attrs["input_root"] = str(root)
    return path


# --------------------------------------------------------------------------- whitening


def test_whitening_whitens_and_round_trips_through_hdf5(tmp_path):
    X, _ = clustered(per_class=20)
    whitening = PCAWhitening(dim=8).fit(X, config=CONFIG)
    assert whitening.projection_.shape == (8, 16)
    # The fitting set, projected, has identity covariance on the kept axes (before the last L2).
    Z = (l2_normalize(X) - whitening.mean_) @ whitening.projection_.T
    np.testing.assert_allclose(np.cov(Z.T, bias=True), np.eye(8), atol=1e-3)
    Y = whitening.transform(X)
    np.testing.assert_allclose(np.linalg.norm(Y, axis=1), 1, rtol=1e-5)
    whitening.save(tmp_path / "w.h5")
    with h5py.File(tmp_path / "w.h5", "r") as f:  # plain arrays, readable without vggfeat
        assert set(f) == {"mean", "projection", "eigenvalues"}
    loaded = PCAWhitening.load(tmp_path / "w.h5")
    np.testing.assert_array_equal(loaded.transform(X), Y)
    assert loaded.config_ == CONFIG
    # A descriptor of zeros stays one, as l2_normalize keeps it: whitened, it was the unit vector of
    # -mean, ranked by every query as a real image is.
    assert not loaded.transform(np.zeros((1, 16))).any() and loaded.transform(X[:1]).any()
    with pytest.raises(VggfeatError, match="layer: conv5_3 expected, fc7 found"):
        loaded.check_config({**CONFIG, "layer": "fc7"})


def test_whitening_fitted_in_blocks_is_the_whole_sets(tmp_path, monkeypatch):
    """A features file of millions of fc7 rows is fitted a block at a time (what the host holds
    does not grow with it), to the whitening of all its rows at once."""
    X, labels = clustered(per_class=30)
    X[:, 0] += 1000  # a mean far from zero costs no precision
    monkeypatch.setattr(vggfeat.whitening, "_BLOCK_BYTES", 8 * 16 * 7)  # 7 rows a block: 18 blocks
    for normalize in (True, False):
        whitening = PCAWhitening(dim=8, normalize_input=normalize).fit(X)
        Y = l2_normalize(X, np.float64) if normalize else X.astype(np.float64)
        eigenvalues = np.linalg.eigvalsh(np.cov(Y.T, bias=True))[::-1][:8]
        np.testing.assert_allclose(whitening.mean_, Y.mean(axis=0), rtol=1e-6)
        np.testing.assert_allclose(whitening.eigenvalues_, eigenvalues, rtol=1e-4)
        Z = (Y - whitening.mean_) @ whitening.projection_.T  # identity covariance on the kept axes
        np.testing.assert_allclose(np.cov(Z.T, bias=True), np.eye(8), atol=1e-3)
    write_features(tmp_path / "db.h5", X, labels)
    done = []  # rows read, a block at a time
    fitted = fit_whitening(tmp_path / "db.h5", tmp_path / "w.h5", dim=8, progress=done.append)
    assert done == [7] * 17 + [1]
    whole = PCAWhitening(dim=8).fit(X)
    sample = fitted.transform(X), whole.transform(X)  # the same up to each axis's sign
    np.testing.assert_allclose(sample[0] @ sample[0].T, sample[1] @ sample[1].T, atol=1e-5)
    X[100, 3] = np.nan  # in the 15th block
    with pytest.raises(VggfeatError, match="NaN or infinite"):
        PCAWhitening().fit(X)
    with pytest.raises(VggfeatError, match="given 7 descriptors, expecting 120"):
        PCAWhitening(dim=4).fit_blocks([X[:7]], len(X), 16)
    with pytest.raises(VggfeatError, match="whitening of 16-d descriptors was given a block of shape \\(7, 8\\)"):
        PCAWhitening(dim=4).fit_blocks([X[:7, :8]], len(X), 16)


def test_whitening_is_a_scikit_learn_transformer():
    """Called "scikit-learn style", it could not be cloned (no get_params), had no fit_transform,
    and in a Pipeline took the labels for its config; transform gave NaN rows for NaN input, which
    fit refuses; dim=2.7 kept 2 axes."""
    import scipy.sparse
    from sklearn.base import clone
    from sklearn.pipeline import make_pipeline

    from vggfeat.svm import LinearSVM

    X, labels = clustered(per_class=20)
    whitening = clone(PCAWhitening(dim=8, normalize_input=False))
    assert whitening.get_params() == {"dim": 8, "normalize_input": False}
    np.testing.assert_allclose(whitening.fit_transform(X), PCAWhitening(dim=8, normalize_input=False).fit(X).transform(X))
    pipeline = make_pipeline(PCAWhitening(dim=8), LinearSVM(C=1.0)).fit(X, labels)
    assert pipeline.score(X, labels) == 1.0
    for make, words in [(lambda: whitening.transform(np.full((1, 16), np.nan)), "descriptor 0 holds NaN or infinite"),
                        (lambda: PCAWhitening(dim=2.7).fit(X), "dim must be a whole number, got 2.7"),
                        (lambda: PCAWhitening(dim="3").fit(X), "dim must be a whole number, got '3'"),
                        (lambda: PCAWhitening(dim=[3]).fit(X), r"dim must be a whole number, got \[3\]"),
                        (lambda: PCAWhitening(normalize_input="no").fit(X), "normalize_input is True or False, got 'no'"),
                        (lambda: PCAWhitening().fit(scipy.sparse.csr_matrix(X)), "pass X.toarray()"),
                        (lambda: PCAWhitening().fit(X, {"layer": "fc7"}), r"by keyword: fit\(X, config=...\)"),
                        (lambda: PCAWhitening(dim=99).fit(X), "between 1 and the descriptor dimension 16"),
                        (lambda: PCAWhitening().set_params(dims=4), "no parameter 'dims'")]:
        with pytest.raises(ValueError, match=words):
            make()
    # Not fitted: scikit-learn's NotFittedError is a ValueError and an AttributeError, and so is this.
    with pytest.raises(ValueError, match="not fitted yet"):
        PCAWhitening().transform(X)
    assert not hasattr(PCAWhitening(), "input_dim") and hasattr(whitening, "input_dim")
    assert repr(PCAWhitening(dim=8)) == "PCAWhitening(dim=8)" and repr(PCAWhitening()) == "PCAWhitening()"


def test_an_unfitted_whitening_is_not_fitted_as_scikit_learn_says_it(tmp_path):
    """check_is_fitted raised an AttributeError (no __sklearn_tags__) whether fitted or not, and
    the whitening's NotFitted was no NotFittedError: ``except NotFittedError`` let it through."""
    import pickle

    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    from vggfeat.errors import NotFitted

    X, _ = clustered()
    with pytest.raises(NotFittedError, match="This PCAWhitening instance is not fitted yet"):
        check_is_fitted(PCAWhitening())
    fitted = PCAWhitening(dim=4).fit(X)
    fitted.save(tmp_path / "w.h5")
    for whitening in fitted, PCAWhitening.load(tmp_path / "w.h5"):
        check_is_fitted(whitening)
        assert whitening.n_features_in_ == 16
    try:
        PCAWhitening().transform(X)
    except NotFittedError as error:  # as a user of scikit-learn writes it
        caught = error
    assert isinstance(caught, NotFitted) and isinstance(caught, VggfeatError)  # (the CLI's one-line report)
    assert isinstance(caught, ValueError) and isinstance(caught, AttributeError)
    assert "not fitted yet; call fit(X) first" in str(caught)
    assert type(pickle.loads(pickle.dumps(caught))) is NotFitted  # as GridSearchCV's workers send it back
    with pytest.raises(NotFittedError):
        PCAWhitening().input_dim


def test_whitening_passes_scikit_learns_estimator_checks():
    """Failed: no __sklearn_tags__ (every check), then no n_features_in_, complex descriptors
    whitened as their real parts (a ComplexWarning only), and refusals of empty, one-row and
    one-descriptor (1-d) data worded otherwise than scikit-learn's (which users search for)."""
    from sklearn.utils.estimator_checks import check_estimator

    with warnings.catch_warnings():
        # By design: it imports no scikit-learn, whose import would slow 'vggfeat info' and --help
        warnings.filterwarnings("ignore", message="Estimator PCAWhitening does not inherit from `sklearn.base.BaseEstimator`")
        results = check_estimator(PCAWhitening(), on_fail=None, on_skip=None)
    failed = {result["check_name"]: str(result["exception"])[:200] for result in results if result["status"] == "failed"}
    assert failed == {}
    assert sum(result["status"] == "passed" for result in results) >= 40  # the checks did run


def test_whitening_refuses_complex_descriptors_and_says_how_to_give_it_one_descriptor():
    """Complex descriptors were whitened as their real parts, with a ComplexWarning only."""
    X, labels = clustered()
    with pytest.raises(VggfeatError, match="Complex data not supported: descriptors must be real numbers, got complex"):
        PCAWhitening().fit(X + 1j)
    whitening = PCAWhitening(dim=4).fit(X)
    with pytest.raises(VggfeatError, match="Complex data not supported"):
        whitening.transform(X + 1j)
    with pytest.raises(VggfeatError, match=r"got shape \(16,\)\. Reshape your data: X.reshape\(1, -1\)"):
        whitening.transform(X[0])
    np.testing.assert_allclose(whitening.transform(X[0].reshape(1, -1)), whitening.transform(X)[:1], atol=1e-6)
    with pytest.raises(VggfeatError, match="X has 8 features, but PCAWhitening is expecting 16 features as input"):
        whitening.transform(X[:, :8])
    with pytest.raises(VggfeatError, match=r"0 feature\(s\) \(shape=\(24, 0\)\) while a minimum of 1 is required"):
        PCAWhitening().fit(X[:, :0])
    from vggfeat.svm import LinearSVM  # (the same check of its descriptors)

    with pytest.raises(VggfeatError, match="Complex data not supported"):
        LinearSVM(C=1.0).fit(X + 1j, labels)


def test_a_whitening_holding_nan_is_refused_though_its_checksum_was_made_again(tmp_path):
    """Taken, every vector whitened was NaN, and retrieval-eval printed a mAP of 0.57 all the same."""
    X, _ = clustered(per_class=10)
    PCAWhitening(dim=4).fit(X).save(tmp_path / "w.h5")
    with h5py.File(tmp_path / "w.h5", "r+") as f:
        f["projection"][0, 0] = np.nan
        f.attrs["checksum"] = vggfeat.whitening._checksum([f[name][:] for name in vggfeat.whitening._ARRAYS],
                                                          bool(f.attrs["normalize_input"]))
    with pytest.raises(VggfeatError, match="w.h5 is damaged: it holds NaN or infinite values"):
        PCAWhitening.load(tmp_path / "w.h5")


def test_whitening_kept_to_as_many_dimensions_as_descriptors_allow_warns_that_it_ranks_nothing():
    X, _ = clustered(per_class=20)  # 60 rows of 16-d
    with pytest.warns(UserWarning, match=r"keeps 11 dimensions from 12 descriptors: .*a cosine of -1/11 between any two"):
        whitening = PCAWhitening().fit(X[:12])
    Y = whitening.transform(X[:12])
    cosines = (Y @ Y.T)[~np.eye(12, dtype=bool)]
    np.testing.assert_allclose(cosines, -1 / 11, atol=1e-4)  # what the warning says
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PCAWhitening().fit(X)  # 16 dimensions from 60 descriptors
        PCAWhitening(dim=8).fit(X[:12])


def test_whitening_refuses_bad_parameters():
    X, _ = clustered()
    with pytest.raises(VggfeatError, match="needs at least 31 descriptors"):
        PCAWhitening(dim=30).fit(X[:10].repeat(3, axis=1))
    with pytest.raises(VggfeatError, match="between 1 and"):
        PCAWhitening(dim=17).fit(X)
    with pytest.raises(VggfeatError, match="not fitted"):
        PCAWhitening().transform(X)
    with pytest.raises(VggfeatError, match="fitted on 16-d"):
        PCAWhitening().fit(X).transform(X[:, :8])


# --------------------------------------------------------------------------- index and search


def test_numpy_exact_search_is_brute_force():
    rng = np.random.default_rng(1)
    V, Q = l2_normalize(rng.normal(size=(50, 8))), l2_normalize(rng.normal(size=(7, 8)))
    scores, rows = exact_search(V, Q, 5)
    full = Q @ V.T
    np.testing.assert_array_equal(rows, np.argsort(-full, axis=1)[:, :5])
    np.testing.assert_allclose(scores, np.sort(full, axis=1)[:, ::-1][:, :5], rtol=1e-6)


@pytest.mark.parametrize("backend", ["numpy", pytest.param("faiss", marks=needs_faiss)])
def test_hits_of_equal_scores_come_by_row_and_a_top_k_begins_every_larger_one(backend):
    """Exact duplicates in a collection score the same: NumPy's top-5 took any four of the five tied
    ([1, 2, 3, 4, 6]), not the first five of its top-9, and FAISS ordered them [5, 4, 3, 2, 1]."""
    V = np.zeros((10, 4), dtype=np.float32)
    V[:, 0], V[0] = 1, [0, 1, 0, 0]  # rows 1 to 9 the same vector
    index = build_index(V, [f"r{i}" for i in range(10)], {**CONFIG, "dim": 4}, backend=backend)
    query = index.prepare(np.array([[1, 0, 0, 0]], dtype=np.float32))
    assert index.search(query, 5)[1][0].tolist() == [1, 2, 3, 4, 5]
    assert index.search(query, 9)[1][0].tolist() == list(range(1, 10))
    rng = np.random.default_rng(3)  # ties on some queries only, the others as before
    V = np.repeat(l2_normalize(rng.normal(size=(20, 8))), 3, axis=0)  # each vector three times
    Q = l2_normalize(rng.normal(size=(6, 8)))
    for k in (1, 2, 4, 7):
        scores, rows = exact_search(V, Q, k)
        best = np.lexsort((np.tile(np.arange(len(V)), (len(Q), 1)), -(Q @ V.T)), axis=1)[:, :k]
        np.testing.assert_array_equal(rows, best)


@pytest.mark.parametrize("backend", ["numpy", pytest.param("faiss", marks=needs_faiss)])
def test_flat_index_round_trip_with_whitening(tmp_path, backend):
    X, labels = clustered()
    whitening = PCAWhitening(dim=10).fit(X, config=CONFIG)
    paths = [f"img{i}.jpg" for i in range(len(X))]
    index = build_index(X, paths, {**CONFIG, "dim": 16}, whitening=whitening, labels=labels, backend=backend)
    assert index.backend == backend and index.dim == 10
    index.save(tmp_path / "db.index")
    loaded = VectorIndex.load(tmp_path / "db.index", backend=backend)
    assert loaded.backend == backend and loaded.paths == paths and loaded.whitening is not None
    results = search(loaded, X[:3], ["a", "b", "c"], k=4)
    for i, result in enumerate(results):
        assert result.paths[0] == paths[i]  # each row finds itself first
        assert result.scores[0] == pytest.approx(1.0, abs=1e-5)
        assert list(result.scores) == sorted(result.scores, reverse=True)
    # The same answers whichever backend and whether loaded or fresh.
    fresh = search(index, X[:3], ["a", "b", "c"], k=4)
    assert [r.paths for r in fresh] == [r.paths for r in results]


@needs_faiss
def test_faiss_and_numpy_agree_and_approximate_indexes_find_near_duplicates(tmp_path):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(1500, 32)).astype(np.float32)
    queries = X[:20] + 0.01 * rng.normal(size=(20, 32)).astype(np.float32)
    exact = build_index(X, [str(i) for i in range(len(X))], {**CONFIG, "dim": 32}, backend="numpy")
    flat = build_index(X, [str(i) for i in range(len(X))], {**CONFIG, "dim": 32}, backend="faiss")
    ns, nr = exact.search(exact.prepare(queries), 10)
    fs, fr = flat.search(flat.prepare(queries), 10)
    np.testing.assert_array_equal(nr, fr)
    np.testing.assert_allclose(ns, fs, atol=1e-5)
    for kind in ("hnsw", "ivfpq"):
        approx = build_index(X, [str(i) for i in range(len(X))], {**CONFIG, "dim": 32}, kind=kind, nlist=8, m=8)
        approx.save(tmp_path / f"{kind}.index")
        loaded = VectorIndex.load(tmp_path / f"{kind}.index")
        _, rows = loaded.search(loaded.prepare(queries), 5)
        assert (rows[:, 0] == np.arange(20)).mean() >= 0.9, kind
        assert search(loaded, queries[:2], ["a", "b"], k=3, qe=2)[0].paths  # reconstruct works for QE


@needs_faiss
def test_ivfpq_takes_by_default_the_largest_divisor_of_the_dimension_up_to_an_eighth():
    """A 100-d whitening: the default --pq-m 12 (100 // 8) was refused as not dividing 100."""
    X = np.random.default_rng(4).normal(size=(600, 100)).astype(np.float32)
    index = build_index(X, [str(i) for i in range(len(X))], {**CONFIG, "dim": 100}, kind="ivfpq", nlist=2)
    assert index.params["m"] == 10
    # FAISS's factory trains PQs for polysemous (Hamming) filtering, which search never uses: it
    # took 30 s of this build's 31 on 2 cores, and ranks the same without.
    assert not index.faiss_index.do_polysemous_training


@pytest.mark.parametrize("kind", ["flat", pytest.param("ivfpq", marks=needs_faiss), pytest.param("hnsw", marks=needs_faiss)])
def test_an_index_is_built_a_block_at_a_time_from_its_file(tmp_path, monkeypatch, kind):
    """A features file of millions of rows is read, whitened and added in blocks (the host holds
    the index, not every raw descriptor beside it): the index of the whole array at once."""
    rng = np.random.default_rng(5)
    X = np.abs(rng.normal(size=(1200, 16))).astype(np.float32)
    labels = np.arange(len(X)) % 3
    db = write_features(tmp_path / "db.h5", X, labels)
    whitening = PCAWhitening(dim=8).fit(X, config=CONFIG)
    whole = build_index(X, [f"{i}" for i in range(len(X))], CONFIG, kind=kind, whitening=whitening, nlist=4, m=4)
    monkeypatch.setattr(vggfeat.index, "BLOCK_BYTES", 4 * 16 * 100)  # 100 rows a block
    reads, done = [], []
    read = vggfeat.features.FeatureFile.read
    monkeypatch.setattr(vggfeat.features.FeatureFile, "read", lambda self, rows=None, **kw: reads.append(len(rows)) or read(self, rows, **kw))
    blocks = index_features(db, kind=kind, whitening=whitening, nlist=4, m=4, progress=done.append)
    assert done == [100] * 12 and max(reads[-12:]) == 100 and sum(reads[-12:]) == len(X)
    assert reads[:-12] == ([] if kind != "ivfpq" else [len(X)])  # ivfpq: its training sample, all 1200 here
    assert blocks.rows == len(X) and blocks.dim == 8 and blocks.labels.tolist() == labels.tolist()
    queries = whole.prepare(X[:50])
    if kind == "flat":  # equal but for the last bits of float32 sums, which BLAS orders by the block's size
        np.testing.assert_allclose(blocks.vectors, whole.vectors, rtol=0, atol=1e-6)
    else:  # the same training and vectors; an HNSW graph grown in blocks may link a little differently
        _, rows = blocks.search(queries, 5)
        _, expected_rows = whole.search(queries, 5)
        assert (rows[:, 0] == expected_rows[:, 0]).mean() >= (1.0 if kind == "ivfpq" else 0.95)


@needs_faiss
def test_a_damaged_index_file_is_refused_naming_it(tmp_path):
    """Its parameters' JSON, a parameter gone, FAISS's bytes cut short: each ended 'vggfeat
    search' in a traceback (JSONDecodeError, KeyError, FAISS's RuntimeError); the FAISS bytes' place
    damaged ended it in h5py's line naming no file."""
    X, _ = clustered()
    build_index(X, [str(i) for i in range(len(X))], CONFIG, kind="hnsw").save(tmp_path / "hnsw.index")
    whole = (tmp_path / "hnsw.index").read_bytes()
    for damage, reason in [(lambda f: f.attrs.__setitem__("params", "{broken"), "(Expecting property name"),
                           (lambda f: f.attrs.__setitem__("params", "{}"), "(ef_search)"),
                           (_cut_faiss_bytes, "(Error in ")]:  # a file written before FAISS's bytes were checksummed
        (tmp_path / "damaged.index").write_bytes(whole)
        with h5py.File(tmp_path / "damaged.index", "r+") as f:
            damage(f)
        with pytest.raises(VggfeatError) as raised:
            VectorIndex.load(tmp_path / "damaged.index")
        assert str(raised.value).startswith(f"{tmp_path / 'damaged.index'} is a damaged index file {reason}")
        assert str(raised.value).endswith("; build it again with 'vggfeat index'")
    # FAISS checks little of what it reads: IVF-PQ's bytes damaged gave wrong hits, or hits of no path
    # (an IndexError). Their checksum refuses them; without one (an older file), hits past the paths are.
    X, _ = clustered(per_class=64)  # 256 rows: what IVF-PQ's training takes
    build_index(X, [str(i) for i in range(len(X))], CONFIG, kind="ivfpq", nlist=2, m=4).save(tmp_path / "ivfpq.index")
    whole = (tmp_path / "ivfpq.index").read_bytes()
    for checksum in (True, False):
        (tmp_path / "damaged.index").write_bytes(whole)
        with h5py.File(tmp_path / "damaged.index", "r+") as f:
            _change_faiss_bytes(f, at=-1, value=0x7F)  # the last list's last id, its highest byte
            if not checksum:
                del f.attrs["faiss_sha256"]
        if checksum:
            with pytest.raises(VggfeatError, match=r"damaged.index was modified or is damaged \(checksum mismatch of its FAISS "):
                VectorIndex.load(tmp_path / "damaged.index")
        else:
            loaded = VectorIndex.load(tmp_path / "damaged.index")
            with pytest.raises(VggfeatError, match=f"the index is damaged: FAISS found row .* of {len(X)}"):
                search(loaded, X, [str(i) for i in range(len(X))], k=len(X))
    with h5py.File(tmp_path / "damaged.index", "r+") as f:  # its paths and FAISS's vectors disagree in number
        paths = f["paths"][:-1]
        del f["paths"]
        f["paths"] = paths
    with pytest.raises(VggfeatError, match=f"its FAISS index holds {len(X)} vectors, its /paths {len(X) - 1}"):
        VectorIndex.load(tmp_path / "damaged.index")
    build_index(X, [str(i) for i in range(len(X))], CONFIG, kind="flat").save(tmp_path / "flat.index")
    misplace_a_chunk(tmp_path / "flat.index", "vectors")  # h5py's OSError, of no errno: it said only that, naming no file
    with pytest.raises(VggfeatError, match=r"flat.index is a damaged index file \(Can't synchronously read data "):
        VectorIndex.load(tmp_path / "flat.index")


def _cut_faiss_bytes(f: h5py.File) -> None:
    serialized = f["faiss"][:]
    del f["faiss"]
    f["faiss"] = serialized[: len(serialized) // 2]
    del f.attrs["faiss_sha256"]


def _change_faiss_bytes(f: h5py.File, at: int, value: int) -> None:
    serialized = f["faiss"][:]
    serialized[at] = value
    del f["faiss"]
    f["faiss"] = serialized


def test_compressed_index_without_faiss_is_a_clear_error(tmp_path, monkeypatch):
    import vggfeat.index

    monkeypatch.setattr(vggfeat.index, "faiss_available", lambda: False)
    monkeypatch.setattr(vggfeat.index, "load_faiss", lambda: (_ for _ in ()).throw(VggfeatError(vggfeat.index.FAISS_MISSING)))
    X, _ = clustered()
    with pytest.raises(VggfeatError, match="pip install 'vggfeat\\[retrieval\\]'"):
        build_index(X, [str(i) for i in range(len(X))], CONFIG, kind="hnsw")
    index = build_index(X, [str(i) for i in range(len(X))], CONFIG)  # flat: the NumPy fallback
    assert index.backend == "numpy"


def test_query_expansion_pulls_in_the_query_class():
    X, labels = clustered(n_classes=3, per_class=8, seed=4)
    index = build_index(X, [str(i) for i in range(len(X))], CONFIG, backend="numpy")
    plain = search(index, X[:1], ["q"], k=8)[0]
    expanded = search(index, X[:1], ["q"], k=8, qe=3)[0]
    precision = lambda r: np.mean(labels[r.rows] == labels[0])  # noqa: E731
    assert precision(expanded) >= precision(plain)
    assert expanded.paths[0] == "0"


def test_mismatched_configuration_is_refused():
    X, _ = clustered()
    index = build_index(X, [str(i) for i in range(len(X))], CONFIG, backend="numpy")
    with pytest.raises(VggfeatError, match="pooling: rmac expected, gem found"):
        index.check_config({**CONFIG, "pooling": "gem"})
    with pytest.raises(VggfeatError, match="whitening was fitted"):
        build_index(X, [str(i) for i in range(len(X))], CONFIG, whitening=PCAWhitening(4).fit(X, config={**CONFIG, "layer": "fc7"}))


# --------------------------------------------------------------------------- evaluation


def test_labelled_evaluation_leave_one_out_by_hand():
    # Three 2-d points: two of class 0 along x, one of class 1 along y, one unlabelled near x.
    X = l2_normalize(np.array([[1, 0.1], [1, 0.3], [0, 1], [1, 0.2]], dtype=np.float32))
    labels = np.array([0, 0, 1, -1])
    result = evaluate_labels(X, labels)
    # Query 0 ranks: 3 (unlabelled), 1 (relevant), 2 -> AP 1/2; query 1 ranks 3, 0 -> AP 1/2.
    # Query 2 (class 1) has no other image of its class: skipped.
    assert result["queries"] == 2 and result["skipped_queries"] == 1
    assert result["map"] == pytest.approx(0.5)
    assert result["recall@1"] == 0 and result["recall@5"] == 1


def test_a_sample_of_queries_gives_their_aps_against_every_row_and_the_error_of_its_mean():
    X, labels = clustered(per_class=25, spread=3.0)
    X = l2_normalize(X)

    def ap_of(row):  # by hand: the other 99 rows ranked by score, precision at each relevant one
        others = np.delete(np.arange(100), row)
        ranked = others[np.argsort(-(X[others] @ X[row]), kind="stable")]
        hits = np.flatnonzero(labels[ranked] == labels[row]) + 1
        return np.mean(np.arange(1, len(hits) + 1) / hits)

    whole, sampled = evaluate_labels(X, labels), evaluate_labels(X, labels, sample=30, seed=3)
    drawn = np.random.default_rng(3).choice(100, size=30, replace=False)
    aps = np.array([ap_of(row) for row in drawn])
    assert sampled["queries"] == 30 and sampled["sampled_from"] == 100 and sampled["database"] == 100
    assert sampled["map"] == pytest.approx(aps.mean(), rel=1e-6) and sampled["map"] != whole["map"]
    # Drawn without replacement from 100: the finite population correction.
    assert sampled["map_standard_error"] == pytest.approx(aps.std(ddof=1) / np.sqrt(30) * np.sqrt(70 / 99), rel=1e-6)
    assert whole["map"] == pytest.approx(np.mean([ap_of(row) for row in range(100)]), rel=1e-6)
    assert evaluate_labels(X, labels, sample=100) == whole == evaluate_labels(X, labels, sample=500)
    with pytest.raises(VggfeatError, match="sample: a count of queries >= 1, got 0"):
        evaluate_labels(X, labels, sample=0)


def test_oxford_ap_and_ground_truth_files(tmp_path):
    # compute_ap: relevant at ranks 0 and 2 of 2 relevant -> (1 + 1)/4 + (1/2 + 2/3)/4.
    assert compute_ap(np.array([0, 2]), 2) == pytest.approx(0.5 + (0.5 + 2 / 3) / 4)
    gt = tmp_path / "gt"
    gt.mkdir()
    (gt / "a_1_query.txt").write_text("oxc1_q 1 2 3 4\n")
    (gt / "a_1_good.txt").write_text("x\n")
    (gt / "a_1_ok.txt").write_text("y\n")
    (gt / "a_1_junk.txt").write_text("z\n")
    truth = read_ground_truth(gt)
    assert truth == [{"query": "q", "ok": ["x", "y"], "junk": ["z"], "bbox": [1.0, 2.0, 3.0, 4.0]}]
    X = l2_normalize(np.array([[1, 0], [0.9, 0.1], [0.95, 0.05], [0, 1], [0.5, 0.5]], dtype=np.float32))
    paths = ["d/q.jpg", "d/x.jpg", "d/z.jpg", "d/y.jpg", "d/w.jpg"]
    result = evaluate_ground_truth(X, paths, X, paths, truth)
    # Ranking for q: q, z(junk, removed), x, w, y -> relevant ranks 1 and 3 (q itself is not ok).
    assert result["map"] == pytest.approx(compute_ap(np.array([1, 3]), 2))
    # mP@k as revisitop's compute_map: k cut to the last relevant rank (4, 1-based): 0/1, 2/4, 2/4.
    assert (result["mp@1"], result["mp@5"], result["mp@10"]) == (0, 0.5, 0.5)
    assert [precision_at(np.array([0, 2]), k) for k in (1, 2, 5)] == [1, 0.5, pytest.approx(2 / 3)]
    assert precision_at(np.array([], dtype=np.int64), 5) == 0
    (tmp_path / "gt.json").write_text(json.dumps({"queries": truth}))
    assert read_ground_truth(tmp_path / "gt.json") == truth


def test_ground_truth_images_that_failed_are_relevant_images_not_retrieved_and_others_are_refused():
    """Paris6k holds 20 damaged files, which extraction records as failed: an ok or junk list
    naming one stopped the whole evaluation ("ok image ... is not in the descriptors")."""
    X = l2_normalize(np.array([[1, 0], [0.9, 0.1], [0.5, 0.5], [0, 1]], dtype=np.float32))
    paths = ["d/q.jpg", "d/x.jpg", "d/w.jpg", "d/y.jpg"]
    truth = [{"query": "q", "ok": ["x", "broken", "y"], "junk": ["damaged"]}]
    with pytest.warns(RuntimeWarning, match=r"2 image\(s\) of the ground truth have no descriptor, their files having "
                                            r"failed \(e.g. broken\): ok, each counts as a relevant image not retrieved"):
        result = evaluate_ground_truth(X, paths, X, paths, truth, failed_paths=["d/broken.jpg", "d/damaged.jpg"])
    # Ranking for q: q, x, w, y -> relevant x and y at ranks 1 and 3, of 3 relevant images.
    assert result["map"] == pytest.approx(compute_ap(np.array([1, 3]), 3))
    with pytest.raises(VggfeatError, match="ok image broken is not in the descriptors"):
        evaluate_ground_truth(X, paths, X, paths, truth)
    # Of a ground truth naming its database (imlist): said once, not also as an image of it with no
    # descriptor, "ranked without", which contradicted "counted as not retrieved".
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        again = evaluate_ground_truth(X, paths, X, paths, truth, failed_paths=["d/broken.jpg", "d/damaged.jpg"],
                                      database=["q", "x", "w", "y", "broken", "damaged"])
    assert [str(warning.message).split(",")[0] for warning in said] == ["2 image(s) of the ground truth have no descriptor"]
    assert again["map"] == result["map"]


def test_two_boxes_of_one_query_image_are_two_queries_each_of_its_own_crop():
    """--crop-queries' rows were matched to the ground truth by the image's name: both boxes of one
    image were scored with the last box's crop (mAP 0.65 where each crop finds its own images)."""
    X = l2_normalize(np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0.1, 0.9, 0], [0, 0, 1]], dtype=np.float32))
    paths = ["a1.jpg", "a2.jpg", "b1.jpg", "b2.jpg", "scene.jpg"]
    truth = [{"query": "scene", "ok": ["a1", "a2"], "junk": [], "bbox": [0, 0, 5, 5]},
             {"query": "scene", "ok": ["b1", "b2"], "junk": [], "bbox": [5, 5, 9, 9]}]
    crops = l2_normalize(np.array([[1, 0.05, 0], [0.05, 1, 0]], dtype=np.float32))  # object A's box, then B's
    result = evaluate_ground_truth(X, paths, crops, None, truth)
    assert result["map"] == 1.0 and result["ap_per_query"] == {"scene": 1.0, "scene (2)": 1.0}
    with pytest.raises(ValueError, match="1 query rows for 2 queries"):
        evaluate_ground_truth(X, paths, crops[:1], None, truth)


def test_query_expansion_in_the_evaluation_is_searchs():
    """retrieval-eval --qe ranks as 'search --qe' does: each query replaced by the normalised sum of
    itself and its top N, leave-one-out excluding the query's own row."""
    X, labels = clustered(n_classes=3, per_class=5, spread=2.5, seed=3)
    X = l2_normalize(X)
    paths = [f"d/{i:02d}.jpg" for i in range(len(X))]
    index = build_index(X, paths, CONFIG, backend="numpy")
    truth = [{"query": "d/00", "ok": ["d/01", "d/02", "d/03"], "junk": ["d/00"]},
             {"query": "d/07", "ok": ["d/05", "d/06", "d/08"], "junk": ["d/07", "d/13"]}]
    for qe in (0, 2, 4):
        result = evaluate_ground_truth(X, paths, X, paths, truth, qe=qe)
        for item, hits in zip(truth, search(index, X[[0, 7]], ["d/00", "d/07"], k=len(X), qe=qe)):
            ranked = [p[:-4] for p in hits.paths if p[:-4] not in item["junk"]]
            ranks = np.flatnonzero(np.isin(ranked, item["ok"]))
            assert result["ap_per_query"][item["query"]] == pytest.approx(compute_ap(ranks, len(item["ok"])))
        # Leave one out: the expansion is the query's top N among the other rows.
        expected = []
        for i in range(len(X)):
            scores = X @ X[i]
            scores[i] = -np.inf
            query = l2_normalize(X[i] + X[np.argsort(-scores, kind="stable")[:qe]].sum(axis=0, keepdims=True))[0]
            scores = X @ query
            scores[i] = -np.inf
            relevant = labels[np.argsort(-scores, kind="stable")[:-1]] == labels[i]
            expected.append(np.mean(np.cumsum(relevant)[relevant] / (np.flatnonzero(relevant) + 1)))
        assert evaluate_labels(X, labels, qe=qe)["map"] == pytest.approx(np.mean(expected))
    assert evaluate_labels(X, labels, qe=2)["map"] != pytest.approx(evaluate_labels(X, labels)["map"])  # it does something
    with pytest.raises(VggfeatError, match="query expansion needs N >= 0, got -1"):
        evaluate_labels(X, labels, qe=-1)
    # More hits than there are images: expanded with all of them, which is said, and recorded as done.
    with pytest.warns(RuntimeWarning, match=f"top 100 hits asked for, of {len(X) - 1} images: each query is expanded "
                                            f"with all {len(X) - 1}"):
        capped = evaluate_labels(X, labels, qe=100)
    assert capped["query_expansion"] == len(X) - 1 and capped["map"] == evaluate_labels(X, labels, qe=len(X) - 1)["map"]
    with pytest.warns(RuntimeWarning, match=f"of {len(X)} images"):
        assert evaluate_ground_truth(X, paths, X, paths, truth, qe=100)["query_expansion"] == len(X)
    with pytest.warns(RuntimeWarning, match=f"of {len(X)} images"):
        assert search(index, X[:1], ["q"], k=3, qe=100)[0].paths == search(index, X[:1], ["q"], k=3, qe=len(X))[0].paths
    with warnings.catch_warnings(), pytest.raises(VggfeatError, match="nothing to retrieve"):
        warnings.simplefilter("error")  # a file of no row: no expansion asked for, none warned of ("of -1 images")
        evaluate_labels(np.zeros((0, 8), dtype=np.float32), np.zeros(0, dtype=np.int64))
    # Inputs that failed deep in numpy, or with a wrong count, are said plainly.
    with pytest.raises(VggfeatError, match=r"labels: a class index per row of X \(15\), -1 for none; got int64 of shape"):
        evaluate_labels(X, labels[:9])
    one_row = rf"query descriptors are rows \[n, D\], got an array of shape \({X.shape[1]},\) \(one query: X\[None\]\)"
    with pytest.raises(VggfeatError, match=one_row):
        search(index, X[0], ["q"])
    with pytest.raises(VggfeatError, match="k: a whole number of hits, 1 or more, got 2.5"):
        search(index, X[:1], ["q"], k=2.5)


LEAVE_ONE_OUT_MEMORY = """
import numpy as np
from vggfeat.retrieval import evaluate_labels

def peak_kb():
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])

rng = np.random.default_rng(0)
X = rng.standard_normal((12000, 16)).astype(np.float32)
X /= np.linalg.norm(X, axis=1, keepdims=True)
before = peak_kb()
evaluate_labels(X, rng.integers(0, 10, 12000))
print((peak_kb() - before) // 1024)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak memory from /proc")
def test_leave_one_out_evaluation_takes_the_memory_it_budgets():
    """A block of queries was sized for its scores alone, and took 10x the 128 MiB budget (1.2 GB,
    whatever the collection's size) with the arrays that rank them."""
    result = subprocess.run([sys.executable, "-c", LEAVE_ONE_OUT_MEMORY], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) < 2 * 128, result.stdout


def test_revisited_ground_truth_is_read_for_each_protocol(tmp_path):
    """ROxford/RParis's gnd re-saved as JSON: images by index; easy, medium and hard as revisitop's
    compute_map has them; a query with no relevant image under a protocol is left out and counted."""
    revisited = {"imlist": ["a", "b", "c", "d", "q1", "q2"], "qimlist": ["q1", "q2"],
                 "gnd": [{"easy": [0], "hard": [1], "junk": [2], "bbx": [1, 2, 30, 40]},
                         {"easy": [], "hard": [3], "junk": []}]}
    (tmp_path / "gnd.json").write_text(json.dumps(revisited))
    expected = {"easy": [(["a"], ["c", "b"]), ([], ["d"])], "medium": [(["a", "b"], ["c"]), (["d"], [])],
                "hard": [(["b"], ["c", "a"]), (["d"], [])]}
    for protocol, items in expected.items():
        truth = read_ground_truth(tmp_path / "gnd.json", protocol)
        assert [(item["ok"], item["junk"]) for item in truth] == items, protocol
        assert [item["query"] for item in truth] == ["q1", "q2"] and truth[0]["bbox"] == [1, 2, 30, 40]
        assert "bbox" not in truth[1]
    X = l2_normalize(np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32))
    paths = [f"{name}.jpg" for name in revisited["imlist"]]
    result = evaluate_ground_truth(X, paths, X, paths, read_ground_truth(tmp_path / "gnd.json", "easy"))
    assert result["queries"] == 1 and result["skipped_queries"] == 1 and list(result["ap_per_query"]) == ["q1"]
    with pytest.raises(VggfeatError, match="is the revisited Oxford/Paris ground truth: choose its protocol"):
        read_ground_truth(tmp_path / "gnd.json")
    with pytest.raises(VggfeatError, match="unknown protocol 'medum'"):
        read_ground_truth(tmp_path / "gnd.json", "medum")
    (tmp_path / "plain.json").write_text(json.dumps([{"query": "q1", "ok": ["a"]}]))
    with pytest.raises(VggfeatError, match="a protocol .* is the revisited Oxford/Paris ground truth's"):
        read_ground_truth(tmp_path / "plain.json", "hard")
    for wrong in ([9], [-1], "3", [1.5]):
        revisited["gnd"][1]["hard"] = wrong
        (tmp_path / "gnd.json").write_text(json.dumps(revisited))
        with pytest.raises(VggfeatError, match="query q2: easy, hard and junk are lists of imlist's indices"):
            read_ground_truth(tmp_path / "gnd.json", "hard")


def test_retrieval_eval_of_the_revisited_ground_truth_names_its_protocol(tmp_path):
    X, labels = clustered(per_class=3)  # paths c0/000.jpg ... c3/011.jpg: stems 000 ... 011
    db = write_features(tmp_path / "db.h5", X, labels)
    names = [f"{i:03d}" for i in range(len(X))]
    (tmp_path / "gnd.json").write_text(json.dumps({"imlist": names, "qimlist": ["000", "003"], "gnd": [
        {"easy": [1], "hard": [2], "junk": [0]}, {"easy": [4, 5], "hard": [], "junk": [3]}]}))
    code, out, err = run_main(["retrieval-eval", db, "--gt", tmp_path / "gnd.json", "--protocol", "hard",
                               "--json", tmp_path / "hard.json"])
    assert code == 0, err
    assert out.splitlines()[0] == "revisited ground truth, hard: 1 query against 12 images, 1 without a relevant image skipped"
    assert [line.split()[0] for line in out.splitlines()[1:8]] == ["mAP", "recall@1", "recall@5", "recall@10", "mP@1",
                                                                   "mP@5", "mP@10"]
    result = json.loads((tmp_path / "hard.json").read_text())
    assert result["revisited_protocol"] == "hard" and list(result["ap_per_query"]) == ["000"]
    code, _, err = run_main(["retrieval-eval", db, "--gt", tmp_path / "gnd.json"])
    assert code == 2 and "choose its protocol, easy, medium or hard (--protocol)" in error_line(err)
    code, _, err = run_main(["retrieval-eval", db, "--protocol", "hard"])
    assert code == 2 and "--protocol goes with --gt" in error_line(err)


def write_revisited(path, imlist, qimlist, gnd):
    """The revisited ground truth re-saved as JSON, as revisitop's gnd_*.pkl holds it."""
    path.write_text(json.dumps({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}))
    return path


# Rows c0/000.jpg ... c0/005.jpg: the query image 000 (its own row nearest it), its two relevant
# images, two others of the database, and 005, an image of no ground truth.
REVISITED_ROWS = l2_normalize(np.array([[1, 0], [0.9, 0.1], [0.8, 0.2], [0, 1], [0.1, 0.9], [0.7, 0.3]], dtype=np.float32))


def test_the_revisited_database_is_its_imlist_which_holds_no_query_image(tmp_path):
    """revisitop's database (imlist) holds none of its 70 query images: FEATURES of the dataset's
    whole folder ranked each query's own image first, a non-relevant hit (mAP 0.79 for 1.00). The
    query's row is described but ranked for no query; a row beyond imlist is a distractor, counted."""
    db = write_features(tmp_path / "db.h5", REVISITED_ROWS, [0] * 6)
    gnd = write_revisited(tmp_path / "gnd.json", ["001", "002", "003", "004"], ["000"],
                          [{"easy": [0, 1], "hard": [], "junk": [], "bbx": [0, 0, 10, 10]}])
    code, out, err = run_main(["retrieval-eval", db, "--gt", gnd, "--protocol", "easy", "--json", tmp_path / "r.json"])
    assert code == 0, err
    assert out.splitlines()[:2] == ["revisited ground truth, easy: 1 query against 5 images (1 of them distractors, "
                                    "beyond the ground truth's database)", "  mAP        1.0000"]
    result = json.loads((tmp_path / "r.json").read_text())
    assert (result["map"], result["database"], result["distractors"], result["query_images_left_out"]) == (1, 5, 1, 1)
    # The same as FEATURES without the query image, the query's descriptor given apart, with
    # query expansion too (the query's own row is no hit to expand with).
    from vggfeat.retrieval import ground_truth_database

    database, queries = ground_truth_database(gnd)
    assert (database, queries) == (["001", "002", "003", "004"], ["000"])
    truth, paths = read_ground_truth(gnd, "easy"), [f"c0/{i:03d}.jpg" for i in range(6)]
    for qe in (0, 2):
        alone = evaluate_ground_truth(REVISITED_ROWS[1:], paths[1:], REVISITED_ROWS[:1], paths[:1], truth, qe=qe)
        within = evaluate_ground_truth(REVISITED_ROWS, paths, REVISITED_ROWS, paths, truth, qe=qe, database=database,
                                       query_images=queries)
        assert within["ap_per_query"] == alone["ap_per_query"] and within["database"] == alone["database"] == 5, qe
    # An image of the database that FEATURES lacks is said.
    write_revisited(gnd, ["001", "002", "003", "004", "099"], ["000"], [{"easy": [0, 1], "hard": [], "junk": []}])
    code, out, err = run_main(["retrieval-eval", db, "--gt", gnd, "--protocol", "easy"])
    assert code == 0 and ("warning: 1 image(s) of the ground truth's database (its imlist) have no descriptor (e.g. 099): "
                          "every query is ranked without them") in err, err


def test_the_revisited_protocol_without_cropped_queries_is_said_not_comparable(tmp_path):
    """revisitop requires queries cropped to their boxes: --protocol without --crop-queries ran
    silently, its figures read as the benchmark's."""
    db = write_features(tmp_path / "db.h5", REVISITED_ROWS, [0] * 6)
    gnd = write_revisited(tmp_path / "gnd.json", ["001", "002", "003", "004"], ["000"],
                          [{"easy": [0, 1], "hard": [], "junk": []}])
    code, out, err = run_main(["retrieval-eval", db, "--gt", gnd, "--protocol", "medium"])
    assert code == 0 and out.startswith("revisited ground truth, medium"), err
    assert err.splitlines() == ["warning: the revisited protocol crops each query image to its box (--crop-queries): with "
                                "whole-image queries, the figures do not compare with published ones"]
    code, _, err = run_main(["retrieval-eval", db, "--gt", gnd, "--protocol", "medium", "--queries", db])
    assert code == 0 and err.splitlines() == [
        f"warning: the revisited protocol crops each query image to its box (--crop-queries): unless {db} describes the "
        "cropped images, the figures do not compare with published ones"]
    plain = tmp_path / "plain.json"  # the original protocol's ground truth: no such warning
    plain.write_text(json.dumps([{"query": "000", "ok": ["001", "002"], "junk": []}]))
    code, _, err = run_main(["retrieval-eval", db, "--gt", plain])
    assert code == 0 and err == ""


def test_cirtorchs_ground_truth_of_the_original_datasets_is_read_as_the_original_protocol(tmp_path):
    """cirtorch's gnd_oxford5k.pkl re-saved as JSON (gnd entries of ok and junk, no easy or hard)
    was taken for the revisited ground truth ("choose its protocol"): it is the original protocol,
    its database its imlist."""
    db = write_features(tmp_path / "db.h5", REVISITED_ROWS, [0] * 6)
    gnd = write_revisited(tmp_path / "gnd_oxford5k.json", ["000", "001", "002", "003", "004"], ["000"],
                          [{"ok": [0, 1, 2], "junk": [3], "bbx": [1, 2, 30, 40]}])
    assert read_ground_truth(gnd) == [{"query": "000", "ok": ["000", "001", "002"], "junk": ["003"],
                                       "bbox": [1, 2, 30, 40]}]
    code, out, err = run_main(["retrieval-eval", db, "--gt", gnd, "--json", tmp_path / "r.json"])
    assert code == 0, err
    # The query is in the database (imlist) and relevant, as the original protocol has it; 005 a distractor.
    assert out.splitlines()[:2] == ["ground truth (ok / junk): 1 query against 6 images (1 of them distractors, beyond "
                                    "the ground truth's database)", "  mAP        1.0000"]
    assert json.loads((tmp_path / "r.json").read_text())["query_images_left_out"] == 0
    code, _, err = run_main(["retrieval-eval", db, "--gt", gnd, "--protocol", "easy"])
    assert code == 2 and error_line(err) == (
        f"Error: a protocol (easy, medium, hard) is the revisited Oxford/Paris ground truth's; {gnd} is not it (its "
        "queries give ok and junk, no easy and hard: the original protocol)")
    write_revisited(gnd, ["000", "001"], ["000"], [{"ok": [0, 7], "junk": []}])
    with pytest.raises(VggfeatError, match="query 000: ok and junk are lists of imlist's indices"):
        read_ground_truth(gnd)


def test_a_pickled_ground_truth_is_refused_saying_how_to_save_it_as_json(tmp_path):
    """revisitop's gnd_roxford5k.pkl given as it is was refused as "a NUL byte: not a text file". It
    is refused as a pickle (loading one runs any code it holds), with a command that re-saves it
    as JSON, which works (its arrays too)."""
    import pickle

    gnd = {"imlist": ["a", "b"], "qimlist": ["q"],
           "gnd": [{"bbx": np.array([1.0, 2.0, 30.0, 40.0]), "easy": np.array([0]), "hard": [np.int64(1)], "junk": []}]}
    for name in ("gnd_roxford5k.pkl", "renamed.json"):
        (tmp_path / name).write_bytes(pickle.dumps(gnd, protocol=4))
        with pytest.raises(VggfeatError) as refusal:
            read_ground_truth(tmp_path / name, "easy")
        message = str(refusal.value)
        assert message.startswith(f"{tmp_path / name} is a pickle, which vggfeat does not read (loading one runs any code "
                                  "it holds): re-save it as JSON, from a file you trust: python -c \""), message
    pickled = tmp_path / "gnd_roxford5k.pkl"
    code, _, err = run_main(["retrieval-eval", tmp_path / "db.h5", "--gt", pickled, "--protocol", "easy"])
    assert code == 2 and "a pickle, which vggfeat does not read" in error_line(err) and "NUL byte" not in err
    command = error_line(err).split('python -c "')[1].split('"')[0]
    assert error_line(err).endswith(f", then give --gt {tmp_path / 'gnd_roxford5k.json'}")
    subprocess.run([sys.executable, "-c", command], check=True, timeout=60)
    assert read_ground_truth(tmp_path / "gnd_roxford5k.json", "easy") == [
        {"query": "q", "ok": ["a"], "junk": ["b"], "bbox": [1, 2, 30, 40]}]


def test_a_whitening_learned_on_the_descriptors_evaluated_is_said_and_recorded(tmp_path):
    """The README's whitening, learned on db.h5 and then applied to db.h5's evaluation, is a known
    leak for benchmark figures, said in no warning: it is said, and --json records the whitening."""
    X, labels = clustered(per_class=6)
    db = write_features(tmp_path / "db.h5", X, labels)
    other = write_features(tmp_path / "other.h5", clustered(per_class=6, seed=1)[0], labels)
    for features in (db, other):
        assert run_main(["whiten", "fit", features, tmp_path / f"w-{features.stem}.h5", "--dim", "8"])[0] == 0
    code, out, err = run_main(["retrieval-eval", db, "--whiten", tmp_path / "w-db.h5", "--json", tmp_path / "m.json"])
    assert code == 0 and "mAP" in out
    assert err.splitlines() == [f"warning: {tmp_path / 'w-db.h5'} was learned on {db}, the descriptors evaluated: a "
                                "whitening fitted to the test images raises their mAP; benchmark figures learn it on "
                                "another dataset (Paris6k's for Oxford5k, Oxford5k's for Paris6k)"]
    assert json.loads((tmp_path / "m.json").read_text())["whitening"] == {
        "file": str(tmp_path / "w-db.h5"), "learned_on": [str(db)], "learned_on_features": True, "output_dim": 8}
    code, out, err = run_main(["retrieval-eval", db, "--whiten", tmp_path / "w-other.h5", "--json", tmp_path / "o.json"])
    assert code == 0 and err == "", err  # learned on another dataset: nothing to say
    assert json.loads((tmp_path / "o.json").read_text())["whitening"]["learned_on_features"] is False
    import shutil

    shutil.copy2(db, tmp_path / "copy.h5")  # the same file under another name (its size and time kept)
    code, _, err = run_main(["retrieval-eval", tmp_path / "copy.h5", "--whiten", tmp_path / "w-db.h5"])
    assert code == 0 and "was learned on" in err
    code, _, _ = run_main(["retrieval-eval", db, "--json", tmp_path / "none.json"])
    assert code == 0 and json.loads((tmp_path / "none.json").read_text())["whitening"] is None
    PCAWhitening(dim=4).fit(X).save(tmp_path / "python.h5")  # from Python: nothing recorded, nothing said
    code, _, err = run_main(["retrieval-eval", db, "--whiten", tmp_path / "python.h5", "--json", tmp_path / "p.json"])
    assert code == 0 and err == "", err
    assert json.loads((tmp_path / "p.json").read_text())["whitening"]["learned_on"] is None


def test_evaluation_edge_cases_are_clear():
    X = l2_normalize(np.eye(3, dtype=np.float32))
    with pytest.raises(VggfeatError, match="nothing to retrieve"):
        evaluate_labels(X, np.array([-1, -1, -1]))
    # An ok image that is also junk is removed, as compute_ap.cpp skips junk first: the query
    # then finds nothing, AP 0, never recalled.
    paths = ["q.jpg", "a.jpg", "b.jpg"]
    result = evaluate_ground_truth(X, paths, X, paths, [{"query": "q", "ok": ["a"], "junk": ["a"]}])
    assert result["map"] == 0 and result["recall@10"] == 0
    with pytest.raises(VggfeatError, match="no query of the ground truth has an ok image"):
        evaluate_ground_truth(X, paths, X, paths, [{"query": "q", "ok": [], "junk": ["a"]}])


def test_malformed_ground_truth_json_is_refused(tmp_path):
    for data in ([], [{"query": "q", "ok": "a.jpg"}], {"queries": [{"ok": []}]}):
        (tmp_path / "gt.json").write_text(json.dumps(data))
        with pytest.raises(VggfeatError, match="expected a list of"):
            read_ground_truth(tmp_path / "gt.json")
    for box in ([1, 2, 3], [3, 2, 1, 4], [1, 4, 3, 2], ["a", 2, 3, 4], 5):
        (tmp_path / "gt.json").write_text(json.dumps([{"query": "q", "ok": ["a"], "bbox": box}]))
        with pytest.raises(VggfeatError, match=r"gt.json, query q: a bounding box is 4 numbers x1 y1 x2 y2"):
            read_ground_truth(tmp_path / "gt.json")
    (tmp_path / "gt").mkdir()
    (tmp_path / "gt" / "a_query.txt").write_text("oxc1_q 1 2 0.5 4\n")
    with pytest.raises(VggfeatError, match=r"a_query.txt: a bounding box is 4 numbers"):
        read_ground_truth(tmp_path / "gt")


# --------------------------------------------------------------------------- commands


def test_commands_whiten_index_search_eval_export(tmp_path):
    X, labels = clustered(per_class=10)
    db = write_features(tmp_path / "db.h5", X, labels)
    assert run_main(["whiten", "fit", db, tmp_path / "w.h5", "--dim", "8"])[0] == 0
    code, out, err = run_main(["index", db, tmp_path / "db.index", "--whiten", tmp_path / "w.h5"])
    assert code == 0, err
    assert "flat index of 40 descriptors (16-d, whitened to 8-d)" in out
    # info knows vggfeat's other files: what they hold and what they were made from.
    code, out, err = run_main(["info", tmp_path / "db.index"])
    assert code == 0 and out.splitlines()[:3] == [f"{tmp_path / 'db.index'}: a vggfeat index (flat), for 'vggfeat search'",
                                                  "  rows         40 (40 labelled), 4 classes",
                                                  "  vectors      8-d unit vectors, whitened from 16-d"], err
    assert "descriptors  vgg16 conv5_3, rmac-pooled, scales 224, 16-d" in out
    code, out, _ = run_main(["info", tmp_path / "w.h5"])
    assert code == 0 and "a vggfeat whitening, 16-d -> 8-d, fitted on 40 descriptors (L2-normalised first)" in out
    code, out, _ = run_main(["info", tmp_path / "w.h5", "--json"])
    assert code == 0 and json.loads(out)["output_dim"] == 8
    PCAWhitening(dim=4).fit(X).save(tmp_path / "python.h5")  # from Python, its descriptors unnamed
    code, out, _ = run_main(["info", tmp_path / "python.h5"])
    assert code == 0 and out.splitlines()[1] == "  descriptors  their extraction is not recorded"
    code, out, err = run_main(["search", tmp_path / "db.index", "--queries", db, "--k", "3", tmp_path / "r.csv"])
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert len(rows) == 3 * len(X) and rows[0]["query"] == rows[0]["path"] and rows[0]["rank"] == "1"
    code, out, err = run_main(["retrieval-eval", db, "--whiten", tmp_path / "w.h5", "--json", tmp_path / "m.json"])
    assert code == 0, err
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["map"] > 0.6 and metrics["recall@1"] >= 0.9 and "mAP" in out
    assert metrics["query_expansion"] == 0
    if recorded_in_file(tmp_path / "m.json") is not None:  # the same command again: nothing to do, the result said again
        code, again, err = run_main(["retrieval-eval", db, "--whiten", tmp_path / "w.h5", "--json", tmp_path / "m.json"])
        assert code == 0 and again.splitlines() == [f"{tmp_path / 'm.json'} already holds the results of this command on "
                                                    "these files, unchanged since; nothing to do", *out.splitlines()[:-1]], err
    code, _, err = run_main(["retrieval-eval", db, "--json", tmp_path / "m.csv"])  # JSON would be written into a .csv
    assert code == 2 and "m.csv names a .csv file: --json writes JSON, give a .json file" in error_line(err)
    assert not (tmp_path / "m.csv").exists()
    code, out, err = run_main(["retrieval-eval", db, "--qe", "2", "--json", tmp_path / "qe.json"])
    assert code == 0, err
    assert out.splitlines()[0].startswith(f"labels (leave one out): {len(X)} queries (expanded with their top 2) against")
    expanded = json.loads((tmp_path / "qe.json").read_text())
    assert expanded["query_expansion"] == 2
    assert expanded["map"] == pytest.approx(evaluate_labels(l2_normalize(X), labels, qe=2)["map"], rel=1e-6)
    code, out, err = run_main(["retrieval-eval", db, "--sample", "10", "--seed", "1", "--json", tmp_path / "s.json"])
    assert code == 0, err
    sampled = json.loads((tmp_path / "s.json").read_text())
    assert out.splitlines()[:2] == [f"labels (leave one out): 10 queries (drawn at random of {len(X)}, seed 1) against "
                                    f"{len(X)} images", f"  mAP        {sampled['map']:.4f} ± "
                                    f"{sampled['map_standard_error']:.4f} (standard error of the sample)"]
    assert sampled["map"] == evaluate_labels(l2_normalize(X), labels, sample=10, seed=1)["map"]
    code, _, err = run_main(["retrieval-eval", db, "--seed", "1"])
    assert code == 2 and "--seed goes with --sample, not given" in error_line(err)
    code, _, err = run_main(["retrieval-eval", db, "--sample", "5", "--gt", tmp_path / "gt.json"])
    assert code == 2 and "--sample draws labelled queries, without --gt" in error_line(err)
    # A query file made differently is refused with the difference named.
    other = write_features(tmp_path / "other.h5", X, labels, config={**CONFIG, "layer": "pool5"})
    code, _, err = run_main(["search", tmp_path / "db.index", "--queries", other])
    assert code == 2 and "layer: conv5_3 expected, pool5 found" in error_line(err)
    code, _, err = run_main(["index", db, tmp_path / "db.index"])
    assert code == 2 and "already exists" in error_line(err)
    assert run_main(["export", db, "--to", "npy"])[0] == 0
    np.testing.assert_array_equal(np.load(tmp_path / "db.npy"), X)
    lines = list(csv.reader(open(tmp_path / "db.paths.csv")))
    assert lines[0] == ["row", "path", "label"] and lines[1][2] == "c0"
    assert list(csv.reader(open(tmp_path / "db.failed.csv"))) == [["path", "label", "reason"]]  # none failed
    # Never over the file exported, whatever its name, even with --overwrite (its failures' CSV replaced it).
    odd = tmp_path / "a.failed.csv"
    odd.write_bytes(Path(db).read_bytes())
    code, _, err = run_main(["export", odd, tmp_path / "a", "--to", "npy", "--overwrite"])
    assert code == 2 and f"{odd} is an input of this command too" in error_line(err), err
    assert odd.read_bytes() == Path(db).read_bytes() and not (tmp_path / "a.npy").exists()


def test_the_same_whiten_fit_and_index_commands_again_have_nothing_to_do(tmp_path):
    """A script run twice: a whitening and an index made by the same command from these files,
    unchanged since, are left as they are (exit 0); another option, or a whitening fitted anew
    since, is refused, saying so."""
    X, labels = clustered(per_class=4)
    db = write_features(tmp_path / "db.h5", X, labels)
    whitening, index = tmp_path / "w.h5", tmp_path / "db.index"
    fit, build = ["whiten", "fit", db, whitening, "--dim", "4"], ["index", db, index, "--whiten", whitening]
    assert run_main(fit)[0] == 0 and run_main(build)[0] == 0
    made = [whitening.stat().st_mtime_ns, index.stat().st_mtime_ns]
    code, out, err = run_main(fit)
    assert code == 0 and out == (f"{whitening} already holds the whitening of this command on {db}, unchanged since: "
                                 "16-d -> 4-d; nothing to do\n"), err
    code, out, err = run_main(build)
    assert code == 0 and out == (f"{index} already holds the index of this command on {db}, unchanged since: flat index "
                                 "of 16 descriptors (4-d); nothing to do\n"), err
    assert [whitening.stat().st_mtime_ns, index.stat().st_mtime_ns] == made
    for path, args in ((whitening, fit), (index, build)):  # what made it
        assert f"  command      vggfeat {' '.join(map(str, args))}\n" in run_main(["info", path])[1]
    code, _, err = run_main([*build, "--kind", "hnsw"])
    assert code == 2 and error_line(err) == (f"Error: {index} already exists, made with other options (--kind: flat then, "
                                             "hnsw now); pass --overwrite to replace it")
    assert run_main([*fit, "--overwrite"])[0] == 0
    code, _, err = run_main(build)
    assert code == 2 and error_line(err) == (f"Error: {index} already exists, made from w.h5 before it last changed; pass "
                                             "--overwrite to replace it")


def test_export_takes_its_format_from_the_outputs_name_and_refuses_a_name_of_another(tmp_path):
    X, labels = clustered(per_class=4)
    db = write_features(tmp_path / "db.h5", X, labels)
    code, out, _ = run_main(["export", db, tmp_path / "e.npy"])
    assert code == 0 and out.strip() == f"wrote {tmp_path / 'e.npy'}, {tmp_path / 'e.paths.csv'}, {tmp_path / 'e.failed.csv'}"
    np.testing.assert_array_equal(np.load(tmp_path / "e.npy"), X)
    for args, error in [
        ([tmp_path / "f.parquet", "--to", "npy"], "OUTPUT f.parquet names a .parquet file, but --to npy: name it f.npy, or leave "
                                                  "--to out"),
        ([tmp_path / "f.csv", "--to", "parquet"], "OUTPUT f.csv names a .csv file, but --to parquet: name it f.parquet"),
        ([tmp_path / "f"], "which format? --to npy, parquet or csv, or an OUTPUT named .npy, .parquet or .csv"),
    ]:
        code, _, err = run_main(["export", db, *args])
        assert code == 2 and error in error_line(err)
    with pytest.raises(VggfeatError, match="f.parquet names a .parquet file, but the export is to npy: name it f.npy"):
        export(db, "npy", tmp_path / "f.parquet")
    (tmp_path / "out").mkdir()  # a folder's name wrote out.npy, ... beside it
    with pytest.raises(VggfeatError, match=f"output {tmp_path / 'out'} is a folder; name a file without its suffix"):
        export(db, "npy", tmp_path / "out")
    (tmp_path / "out").rmdir()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["db.h5", "e.failed.csv", "e.npy", "e.paths.csv"]
    # Beside FEATURES, named after it whatever its name ends in: db.npy.h5 was refused as an OUTPUT not given.
    named = write_features(tmp_path / "db.npy.h5", X, labels)
    assert [path.name for path in export(named, "parquet")] == ["db.npy.parquet", "db.npy.failed.csv"]


@pytest.mark.parametrize("killed", ["e.npy", "e.paths.csv", "e.failed.csv", "m.json"])
def test_an_export_or_a_json_file_killed_as_it_is_renamed_into_place_is_taken_up_by_the_same_command(
        tmp_path, monkeypatch, killed):
    """export (its three files renamed into place one after the other) and retrieval-eval --json,
    the command killed just after the file ``killed`` was renamed into place: the same command
    again has nothing to do, or writes the export whole, where it refused the files as another's
    (--overwrite)."""
    needs_extended_attributes(tmp_path)
    X, labels = clustered(per_class=4)
    db = write_features(tmp_path / "db.h5", X, labels)
    if killed == "m.json":
        command = ["retrieval-eval", db, "--json", tmp_path / "m.json"]
        written = ["m.json"]
    else:
        command = ["export", db, tmp_path / "e.npy"]
        written = ["e.npy", "e.paths.csv", "e.failed.csv"]
    killed_after_renaming(monkeypatch, killed)
    with pytest.raises(Killed):
        run_main(command)
    monkeypatch.undo()
    left = sorted(path.name for path in tmp_path.iterdir())  # no temporary file among them
    assert killed in left and set(left) <= {"db.h5", *written}
    code, out, err = run_main(command)
    assert code == 0, err
    assert ("already hold" in out.splitlines()[0]) == (len(left) == 1 + len(written)), out
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(["db.h5", *written])
    if killed == "m.json":
        assert json.loads((tmp_path / "m.json").read_text())["queries"] == len(X)
    else:
        np.testing.assert_array_equal(np.load(tmp_path / "e.npy"), X)
    assert "already hold" in run_main(command)[1].splitlines()[0]  # and again: nothing to do


@pytest.mark.parametrize("name", ["r.csv", "r.json"])
def test_search_results_killed_as_they_are_renamed_into_place_are_taken_up_by_the_same_command(tmp_path, monkeypatch,
                                                                                               name):
    """The results file recorded how it was made only after its rename: a kill in between left a
    file that the same search again refused as another's (--overwrite)."""
    needs_extended_attributes(tmp_path)
    X, labels = clustered(per_class=4)
    db = write_features(tmp_path / "db.h5", X, labels)
    assert run_main(["index", db, tmp_path / "db.index"])[0] == 0
    search = ["search", tmp_path / "db.index", "--queries", db, tmp_path / name, "--k", "3"]
    killed_after_renaming(monkeypatch, name)
    with pytest.raises(Killed):
        run_main(search)
    monkeypatch.undo()
    written = (tmp_path / name).read_bytes()
    code, out, err = run_main(search)
    assert code == 0 and out.startswith(f"{tmp_path / name} already holds the results of this command"), err
    assert (tmp_path / name).read_bytes() == written
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(["db.h5", "db.index", name])


def test_search_and_retrieval_eval_never_write_over_a_file_unasked(tmp_path):
    X, labels = clustered(per_class=4)
    db = write_features(tmp_path / "db.h5", X, labels)
    assert run_main(["index", db, tmp_path / "db.index"])[0] == 0
    for name in ("r.csv", "m.png", "m.json"):
        (tmp_path / name).write_text("mine")
    search = ["search", tmp_path / "db.index", "--queries", db, tmp_path / "r.csv"]
    code, _, err = run_main(search)
    assert code == 2 and "r.csv already exists; pass --overwrite" in error_line(err)
    code, _, err = run_main(["search", tmp_path / "db.index", "--queries", db, "--montage", tmp_path / "m.png"])
    assert code == 2 and "m.png already exists; pass --overwrite" in error_line(err)
    code, _, err = run_main(["retrieval-eval", db, "--json", tmp_path / "m.json"])
    assert code == 2 and "m.json already exists; pass --overwrite" in error_line(err)
    # A montage is a PNG: named as OUTPUT, it replaced the results silently; named .jpg, it held PNG bytes.
    for name, fix in (("new.csv", "new.png"), ("hits.jpg", "hits.png")):
        code, _, err = run_main(["search", tmp_path / "db.index", "--queries", db, tmp_path / "new.csv", "--montage", tmp_path / name])
        assert code == 2 and f"--montage {name}: a montage is a PNG; name it {fix}" in error_line(err)
    assert all((tmp_path / name).read_text() == "mine" for name in ("r.csv", "m.png", "m.json"))
    assert run_main([*search, "--overwrite"])[0] == 0
    assert len(list(csv.DictReader(open(tmp_path / "r.csv")))) == 10 * len(X)
    assert run_main(["retrieval-eval", db, "--json", tmp_path / "m.json", "--overwrite"])[0] == 0
    assert json.loads((tmp_path / "m.json").read_text())["queries"] == len(X)


def test_export_parquet(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    X, labels = clustered()
    failed = [("c1/broken.jpg", "cannot identify image file", 1), ("x/empty.png", "empty file", -1)]
    db = write_features(tmp_path / "db.h5", X, np.where(np.arange(len(labels)) == 0, -1, labels), failed=failed)
    code, out, err = run_main(["export", db, tmp_path / "out", "--to", "parquet"])
    assert code == 0, err
    assert out.strip() == f"wrote {tmp_path / 'out.parquet'}, {tmp_path / 'out.failed.csv'}"
    # The failures, with their class as the rows' labels are written.
    assert list(csv.reader(open(tmp_path / "out.failed.csv"))) == [
        ["path", "label", "reason"], ["c1/broken.jpg", "c1", "cannot identify image file"], ["x/empty.png", "", "empty file"]]
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column_names == ["path", "label", "features"]
    np.testing.assert_array_equal(np.array(table["features"].to_pylist(), dtype=np.float32), X)
    assert table["label"][0].as_py() is None
    assert json.loads(table.schema.metadata[b"vggfeat_config"])["layer"] == "conv5_3"
    # The same file to NumPy beside it: the same failures, whose list the two exports share.
    assert run_main(["export", db, tmp_path / "out.npy"])[0] == 0
    (tmp_path / "out.failed.csv").write_text("path,label,reason\nmine.jpg,,kept\n")  # another list: not replaced
    code, _, err = run_main(["export", db, tmp_path / "out.npy"])
    assert code == 2 and "out.failed.csv already exist; pass --overwrite" in error_line(err) and "out.npy" in error_line(err)
    assert (tmp_path / "out.failed.csv").read_text() == "path,label,reason\nmine.jpg,,kept\n"


@pytest.mark.parametrize("to", ["npy", "parquet"])
def test_an_export_holds_a_block_of_paths_at_a_time(tmp_path, monkeypatch, to):
    """Every path was held as a list (ten million: a GB), with a class name per row besides."""
    if to == "parquet":
        pq = pytest.importorskip("pyarrow.parquet")
    X, labels = clustered()
    db = write_features(tmp_path / "db.h5", X, labels)
    with FeatureFile(db) as f:
        paths, names = f.paths, [f.classes[y] for y in f.labels]
    monkeypatch.setattr(vggfeat.export, "_BLOCK_BYTES", 7 * 16 * 4)  # 7 rows of 16-d a block
    monkeypatch.setattr(FeatureFile, "paths", property(lambda self: pytest.fail("every path read at once")))
    vggfeat.export.export(db, to)
    if to == "npy":
        rows = list(csv.reader(open(tmp_path / "db.paths.csv")))
        assert rows == [["row", "path", "label"], *([str(i), path, name] for i, (path, name) in enumerate(zip(paths, names)))]
        np.testing.assert_array_equal(np.load(tmp_path / "db.npy"), X.astype(np.float32))
    else:
        table = pq.read_table(tmp_path / "db.parquet")
        assert table["path"].to_pylist() == paths and table["label"].to_pylist() == names
        np.testing.assert_array_equal(np.array(table["features"].to_pylist(), dtype=np.float32), X)


def test_the_same_export_again_has_nothing_to_do_until_its_files_or_the_descriptors_change(tmp_path):
    """A script run twice: an export whose files record (as a CSV does) that this command made them
    from the descriptor file as it is now is left as it is; the other format beside it shares the
    list of failures; an edited file, or descriptors written anew, are refused, saying which."""
    pytest.importorskip("pyarrow")
    X, labels = clustered(per_class=4)
    db = write_features(tmp_path / "db.h5", X, labels, failed=[("c1/broken.jpg", "cannot identify image file", 1)])
    npy, parquet = ["export", db, tmp_path / "e.npy"], ["export", db, tmp_path / "e", "--to", "parquet"]
    assert run_main(npy)[0] == 0
    if recorded_in_file(tmp_path / "e.npy") is None:
        pytest.skip("this file system keeps no extended attributes")
    assert run_main(parquet)[0] == 0  # the failures' list rewritten, the same
    written = {path.name: path.stat().st_mtime_ns for path in tmp_path.glob("e.*")}
    assert sorted(written) == ["e.failed.csv", "e.npy", "e.parquet", "e.paths.csv"]
    for args, files in ((npy, ["e.npy", "e.paths.csv", "e.failed.csv"]), (parquet, ["e.parquet", "e.failed.csv"])):
        code, out, err = run_main(args)
        assert code == 0 and out == (f"{', '.join(str(tmp_path / name) for name in files)} already hold the export of "
                                     f"this command on {db}, unchanged since; nothing to do\n"), err
    assert {path.name: path.stat().st_mtime_ns for path in tmp_path.glob("e.*")} == written
    code, out, _ = run_main(["info", tmp_path / "e.npy"])
    assert code == 0 and out.splitlines()[:2] == [f"{tmp_path / 'e.npy'}: written by vggfeat export {db} {tmp_path / 'e.npy'}",
                                                 f"  made from    {db} (unchanged since)"]
    with open(tmp_path / "e.paths.csv", "a") as f:
        f.write("a row of the user's\n")
    code, _, err = run_main(npy)
    assert code == 2 and error_line(err) == f"Error: {tmp_path / 'e.paths.csv'} already exists; pass --overwrite to replace it"
    write_features(db, X[::-1].copy(), labels)
    code, _, err = run_main(parquet)
    assert code == 2 and error_line(err) == (f"Error: {tmp_path / 'e.parquet'} already exists, made from db.h5 before it last "
                                             "changed; pass --overwrite to replace it")
    assert run_main([*parquet, "--overwrite"])[0] == 0
    code, out, _ = run_main(parquet)
    assert code == 0 and "nothing to do" in out
    assert list(csv.reader(open(tmp_path / "e.failed.csv"))) == [["path", "label", "reason"]]  # the new file's (none)


def test_what_a_file_records_is_said_again_as_text_never_as_a_terminals_escape_sequences(tmp_path):
    """A --json report whose record (an extended attribute anyone can write) holds an escape
    sequence: said again by the rerun, and by info, it set the terminal's title and printed a
    made-up mAP over the real one."""
    import os

    X, labels = clustered(per_class=4)
    db = write_features(tmp_path / "db.h5", X, labels)
    report = tmp_path / "m.json"
    assert run_main(["retrieval-eval", db, "--json", report])[0] == 0
    record = recorded_in_file(report)
    if record is None:
        pytest.skip("this file system keeps no extended attributes")
    stored = json.loads(os.getxattr(report, "user.vggfeat.made_from"))
    stored["said"] = ["\x1b]0;pwned\x07\x1b[2K\r  mAP        0.9999"]
    os.setxattr(report, "user.vggfeat.made_from", json.dumps(stored).encode())
    for args in (["retrieval-eval", db, "--json", report], ["info", report]):
        code, out, err = run_main(args)
        assert code == 0 and "\x1b" not in out and "\\x1b]0;pwned\\x07" in out, (out, err)
    stored["said"] = []
    stored["made_from"] = "[" * 1500  # deeper than json reads (a RecursionError): a record of nothing
    os.setxattr(report, "user.vggfeat.made_from", json.dumps(stored).encode())
    code, _, err = run_main(["retrieval-eval", db, "--json", report])
    assert code == 2 and "already exists" in error_line(err), err


def test_the_same_search_into_a_file_again_has_nothing_to_do_until_a_file_or_an_option_changes(tmp_path):
    X, labels = clustered(per_class=4)
    db = write_features(tmp_path / "db.h5", X, labels)
    index, results = tmp_path / "db.index", tmp_path / "r.json"
    assert run_main(["index", db, index])[0] == 0
    search = ["search", index, "--queries", db, results, "--backend", "numpy", "--k", "3"]
    code, out, err = run_main(search)
    assert code == 0 and out == f"wrote {results}: 16 queries x top 3 (numpy, flat)\n", err
    if recorded_in_file(results) is None:
        pytest.skip("this file system keeps no extended attributes")
    written = results.stat().st_mtime_ns
    code, out, err = run_main(search)
    assert code == 0 and out == (f"{results} already holds the results of this command on these files, unchanged since: "
                                 "16 queries x top 3 (numpy, flat); nothing to do\n"), err
    assert results.stat().st_mtime_ns == written
    code, _, err = run_main([*search[:-2], "--k", "4"])
    assert code == 2 and error_line(err) == (f"Error: {results} already exists, made with other options (--k: 3 then, 4 now); "
                                             "pass --overwrite to replace it")
    assert run_main(["index", db, index, "--overwrite"])[0] == 0
    code, _, err = run_main(search)
    assert code == 2 and error_line(err) == (f"Error: {results} already exists, made from db.index before it last changed; "
                                             "pass --overwrite to replace it")
    code, _, err = run_main([*search, "--montage", tmp_path / "m.png"])  # drawn from the images too: not compared
    assert code == 2 and error_line(err) == f"Error: {results} already exists; pass --overwrite to replace it"


def test_montage_is_a_png_of_the_expected_size(tmp_path):
    for i in range(3):
        write_rgb(tmp_path / f"{i}.png", 120 + 20 * i, 90, seed=i)
    hits = [[(tmp_path / "1.png", 0.9), (tmp_path / "2.png", 0.5), (tmp_path / "missing.png", 0.1)], [(tmp_path / "0.png", 0.7)]]
    unreadable = []
    size = draw_montage([tmp_path / "0.png", tmp_path / "1.png"], hits, tmp_path / "m.png", tile=64, unreadable=unreadable)
    assert size == montage_size(2, 4, 64) and unreadable == [str(tmp_path / "missing.png")]
    with Image.open(tmp_path / "m.png") as image:
        assert image.format == "PNG" and image.size == size
    # A tile of 100,000 px asked for 270 GB, and the process was killed.
    with pytest.raises(VggfeatError, match=r"a montage of 400,030 x 200,074 px is over 100 Mpx: a smaller tile"):
        draw_montage([tmp_path / "0.png", tmp_path / "1.png"], hits, tmp_path / "big.png", tile=100_000)


def test_montage_outlines_the_box_searched_for_on_its_query(tmp_path):
    """search --box: the query's picture (200x100 in a 100 px cell: scale 1/2, 25 px down) with the
    box outlined where it lies; a query without a box, and every hit, are left as they are."""
    from vggfeat.montage import GAP, QUERY_BOX

    Image.new("RGB", (200, 100), (90, 90, 90)).save(tmp_path / "q.png")
    size = draw_montage([tmp_path / "q.png", tmp_path / "q.png"], [[(tmp_path / "q.png", 0.5)]] * 2, tmp_path / "m.png",
                        tile=100, query_boxes=[[40, 20, 120, 80], None])
    assert size == montage_size(2, 2, 100)
    with Image.open(tmp_path / "m.png") as image:
        pixels = np.asarray(image.convert("RGB"))
    left, top = GAP, GAP + 25  # the picture's corner in the first cell
    box = pixels[top + 10 : top + 40, left + 20 : left + 60]  # the box, scaled by 1/2
    assert (box[0, 5] == QUERY_BOX).all() and (box[10, 0] == QUERY_BOX).all() and (box[-1, 5] == QUERY_BOX).all()
    assert (box[10, 10] == 90).all()  # inside: the picture
    outlined = (pixels == QUERY_BOX).all(axis=2)
    first_row = slice(0, GAP + 100)
    assert outlined[first_row].sum() > 0 and not outlined[GAP + 100 :].any()  # not on the second query
    assert not outlined[:, GAP + 100 + GAP :].any()  # nor on the hits


def test_montage_of_a_query_file_finds_its_images_in_its_own_folder(tmp_path, monkeypatch):
    import vggfeat.montage

    X, labels = clustered(per_class=3)
    db = write_features(tmp_path / "db.h5", X, labels, root=tmp_path / "database")
    queries = write_features(tmp_path / "q.h5", X[:2], labels[:2], root=tmp_path / "elsewhere")
    assert run_main(["index", db, tmp_path / "db.index"])[0] == 0
    drawn = {}
    monkeypatch.setattr(vggfeat.montage, "draw_montage",
                        lambda queries, hits, output, tile, query_boxes, unreadable: drawn.update(queries=queries, hits=hits) or (1, 1))
    code, _, err = run_main(["search", tmp_path / "db.index", "--queries", queries, "--montage", tmp_path / "m.png"])
    assert code == 0, err
    assert drawn["queries"] == [tmp_path / "elsewhere" / "c0/000.jpg", tmp_path / "elsewhere" / "c0/001.jpg"]
    assert all(path.parent.parent == tmp_path / "database" for path, _ in drawn["hits"][0])
    monkeypatch.undo()  # drawn: its images are not there, which is said
    code, out, err = run_main(["search", tmp_path / "db.index", "--queries", queries, "--montage", tmp_path / "m.png",
                               "--montage-queries", "1", "--montage-hits", "2"])
    assert code == 0 and err.strip() == (f"warning: 3 images of the montage could not be read, drawn grey (e.g. "
                                             f"{tmp_path / 'elsewhere' / 'c0/000.jpg'}): is {tmp_path / 'database'} their "
                                             "folder? (--root names it)"), err
    code, _, err = run_main(["search", tmp_path / "db.index", "--queries", queries, "--montage", tmp_path / "n.png",
                             "--root", tmp_path / "none"])
    assert code == 2 and "--root " + str(tmp_path / "none") + ": not a folder" in err
    # Refused before any work: it wrote the results, then refused their rerun as existing.
    code, _, err = run_main(["search", tmp_path / "db.index", "--queries", queries, tmp_path / "r.csv", "--montage",
                             tmp_path / "n.png", "--tile", "5000"])
    assert code == 2 and "is over 100 Mpx: a smaller tile" in error_line(err) and not (tmp_path / "r.csv").exists()


def test_leave_one_out_of_descriptors_that_are_not_numbers_is_refused():
    """NaN descriptors gave a mAP (0.57); a list of rows or one row, a NumPy error of its indexing."""
    X, labels = np.eye(4, dtype=np.float32), np.array([0, 0, 1, 1])
    for given, said in ((np.full((4, 4), np.nan), "X holds NaN or infinite values"),
                        (X[0], r"X: descriptors \[N, d\] of floating-point numbers, got float32 of shape \(4,\)"),
                        (X.astype(int), "got int64 of shape")):
        with pytest.raises(VggfeatError, match=said):
            evaluate_labels(given, labels)
    assert evaluate_labels(X.tolist(), labels)["queries"] == 4
