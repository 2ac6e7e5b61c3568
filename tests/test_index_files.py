"""Index files edited by hand or damaged: refused in one line naming the file (never a traceback, a
huge allocation or silently other hits), by ``VectorIndex.load``, ``vggfeat info``, ``vggfeat
search`` and ``vggfeat index --update``."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from imagefiles import write_rgb
from runhelpers import error_line, run_main
from svmhelpers import write_features
from vggfeat.errors import VggfeatError
from vggfeat.features import FeatureFile
from vggfeat.index import VectorIndex, build_index, faiss_available, index_features
from vggfeat.indexupdate import update_index
from vggfeat.search import search
from vggfeat.whitening import PCAWhitening

needs_faiss = pytest.mark.skipif(not faiss_available(), reason="faiss not installed (pip install faiss-cpu)")
CONFIG = {"model": "vgg16", "weights": "random", "weights_sha256": "abc", "weights_seed": 0, "layer": "conv5_3",
          "pooling": "gem", "scales": [224], "aggregate": "mean", "flip": False, "preprocessing": {}, "dim": 16}
ROWS = 300  # IVF-PQ's training takes 256 at least
QUERIES = np.abs(np.random.default_rng(1).normal(size=(3, 16))).astype(np.float32)


def write_described(path) -> None:
    """A descriptors file of ROWS rows labelled a or b by folder, described at time 100."""
    rng = np.random.default_rng(0)
    string = h5py.string_dtype("utf-8")
    with h5py.File(path, "w") as f:
        f["features"] = np.abs(rng.normal(size=(ROWS, 16))).astype(np.float32)
        f.create_dataset("paths", data=[f"{'ab'[i % 2]}/{i:04d}.jpg" for i in range(ROWS)], dtype=string)
        f["labels"] = (np.arange(ROWS) % 2).astype(np.int32)
        f.create_dataset("classes", data=["a", "b"], dtype=string)
        f["read_after"] = np.full(ROWS, 100.0)
        for name in ("paths", "errors"):
            f.create_dataset(f"failed/{name}", shape=(0,), dtype=string)
        f.attrs.update({"config": json.dumps(CONFIG), "complete": True, "input_root": "/photos"})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """kind -> an index file of the descriptors file db.h5 beside it (built once for the module)."""
    folder = tmp_path_factory.mktemp("indexes")
    write_described(folder / "db.h5")
    kinds = ["flat", *(["ivfpq", "hnsw"] if faiss_available() else [])]
    for kind in kinds:
        index = index_features(folder / "db.h5", kind=kind) if kind != "ivfpq" else small_ivfpq(folder / "db.h5")
        index.save(folder / f"{kind}.index")
    return {kind: folder / f"{kind}.index" for kind in kinds}


def small_ivfpq(features) -> VectorIndex:
    """index_features(features, kind="ivfpq", nlist=2, m=4), but of 4-bit codes: the 256 centroids
    of each of the 8-bit codes' sub-quantizers took 10 s to train."""
    import faiss

    index = index_features(features)
    trained = faiss.index_factory(16, "IVF2,PQ4x4", faiss.METRIC_INNER_PRODUCT)
    trained.train(index.vectors)
    trained.add(index.vectors)
    index.kind, index.vectors, index.faiss_index = "ivfpq", None, trained
    index.params = {"nlist": 2, "m": 4, "nprobe": 2}
    return index


def edited(built, tmp_path, kind, edit):
    """A copy of the ``kind`` index (and of its descriptors file, beside it) with ``edit(f)`` applied."""
    shutil.copy(built[kind].with_name("db.h5"), tmp_path / "db.h5")
    path = shutil.copy(built[kind], tmp_path / f"{kind}.index")
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


def refusal(path, backend="auto") -> str:
    """The one-line VggfeatError, naming the file, of loading the index at ``path`` and searching it."""
    with pytest.raises(VggfeatError) as raised:
        index = VectorIndex.load(path, backend=backend)
        search(index, QUERIES, ["q1", "q2", "q3"], k=3, qe=1)
    message = str(raised.value)
    assert message.startswith(f"{path} ") and "\n" not in message
    return message


def set_param(**values):
    def edit(f):
        f.attrs["params"] = json.dumps({**json.loads(f.attrs["params"]), **values})
    return edit


def set_attribute(name, value):
    return lambda f: f.attrs.__setitem__(name, value)


def replaced(name, make):
    """An edit putting ``make(old array, f)`` in the place of ``name``: the array it returns, or else
    what it created there."""
    def edit(f):
        old = f[name][:]
        del f[name]
        new = make(old, f)
        if new is not None:
            f[name] = new
    return edit


@needs_faiss
@pytest.mark.parametrize("kind, name, value", [
    ("ivfpq", "nprobe", -1),  # FAISS's OverflowError
    ("ivfpq", "nprobe", 0),  # FAISS's RuntimeError mid-search
    ("ivfpq", "nprobe", 10**12),  # more lists than the index has
    ("ivfpq", "nprobe", 1.5),
    ("ivfpq", "nlist", 3),  # not the FAISS index's
    ("hnsw", "ef_search", 1e30),  # FAISS's OverflowError
    ("hnsw", "ef_search", -1),  # one hit instead of three, silently
    ("hnsw", "ef_search", 0),
    ("hnsw", "ef_search", 2**22),  # a gigabyte-sized heap per query (2^31: std::bad_alloc)
    ("hnsw", "ef_search", "128"),
    ("hnsw", "ef_search", True),
    ("hnsw", "hnsw_m", 10**6),  # what an update that builds the graph again would take
])
def test_a_search_parameter_edited_by_hand_is_refused_naming_the_file_and_it(built, tmp_path, kind, name, value):
    path = edited(built, tmp_path, kind, set_param(**{name: value}))
    message = refusal(path)
    assert f"is damaged: its parameter {name} is " in message
    assert message.endswith("build it again with 'vggfeat index'")


@needs_faiss
@pytest.mark.parametrize("params", ["[16, 2, 4]", "16"])
def test_parameters_that_are_json_of_another_kind_are_refused(built, tmp_path, params):
    path = edited(built, tmp_path, "ivfpq", set_attribute("params", params))
    assert "is damaged: its params is a JSON " in refusal(path)


@pytest.mark.parametrize("config", ["[1, 2]", "3", '"vgg16"', json.dumps({**CONFIG, "dim": "16"}),
                                    json.dumps({**CONFIG, "stacked": 3})])
def test_a_configuration_of_another_kind_is_refused_by_load_info_and_search(built, tmp_path, config):
    """A list or a number for the configuration's object was an AttributeError's traceback (at the
    first search, and in 'vggfeat info'); a dimension of text a ValueError's."""
    path = edited(built, tmp_path, "flat", set_attribute("config", config))
    assert "is damaged: its config" in refusal(path)
    code, _, err = run_main(["info", path])
    assert code != 0 and error_line(err).startswith(f"Error: {path} is damaged: its config")


def test_a_configuration_lacking_what_describes_the_queries_is_refused_before_any_image_is_read(built, tmp_path):
    """The network's layer, pooling ... taken from the index's configuration: a KeyError's traceback."""
    config = {key: value for key, value in CONFIG.items() if key not in ("layer", "pooling")}
    path = edited(built, tmp_path, "flat", set_attribute("config", json.dumps(config)))
    write_rgb(tmp_path / "query.png", 32, 32)
    code, _, err = run_main(["search", path, tmp_path / "query.png", "--device", "cpu"])
    assert code != 0 and "recorded configuration lacks layer, pooling" in error_line(err)


def _more_rows(old, f):
    return np.concatenate([old, old[:5]])


@pytest.mark.parametrize("kind, name, make, said", [
    ("flat", "vectors", lambda old, f: old[:-5], "/vectors holds 295 rows, /paths 300"),  # searched as it was
    ("flat", "vectors", lambda old, f: old[:, :8], "its vectors are 8-d, its configuration says 16-d"),  # a ValueError
    ("flat", "vectors", lambda old, f: (old * 0).astype(np.int32), "/vectors is 2-d of int32"),  # scores all 0
    ("flat", "vectors", lambda old, f: old[:, :, None], "/vectors is 3-d of float32"),
    ("flat", "vectors", lambda old, f: f.create_group("vectors") and None, "/vectors is not a dataset"),
    ("flat", "labels", lambda old, f: old[:-3], "/labels holds 297 rows, /paths 300"),
    ("flat", "labels", lambda old, f: old + 0.5, "/labels is 1-d of float64"),
    ("flat", "labels", lambda old, f: old.reshape(-1, 1), "/labels is 2-d of int32"),
    ("flat", "read_after", _more_rows, "/read_after holds 305 rows, /paths 300"),
    ("flat", "paths", lambda old, f: old.reshape(150, 2), "/paths is 2-d of text"),  # an IndexError
    pytest.param("hnsw", "labels", lambda old, f: old[:-3], "/labels holds 297 rows, /paths 300", marks=needs_faiss),
    pytest.param("hnsw", "faiss", lambda old, f: old[:-1].reshape(-1, 1), "/faiss is 2-d of uint8", marks=needs_faiss),
])
def test_datasets_of_other_lengths_shapes_or_kinds_are_refused_naming_them(built, tmp_path, kind, name, make, said):
    path = edited(built, tmp_path, kind, replaced(name, make))
    assert said in refusal(path, backend="numpy" if kind == "flat" else "auto")


@pytest.mark.parametrize("kind, name, shape, dtype", [
    ("flat", "vectors", (10**12, 16), np.float32),  # 64 TB declared: reading it whole allocated it
    ("flat", "labels", (10**13,), np.int32),
    ("flat", "paths", (10**12,), h5py.string_dtype()),
    ("flat", "read_after", (10**12,), np.float64),
    pytest.param("hnsw", "faiss", (10**13,), np.uint8, marks=needs_faiss),
])
def test_a_compressed_dataset_declaring_far_more_than_the_file_stores_is_refused_before_it_is_read(
        built, tmp_path, kind, name, shape, dtype):
    def declared(old, f):
        f.create_dataset(name, shape=shape, dtype=dtype, chunks=(2**16, *shape[1:]), compression="gzip")

    path = edited(built, tmp_path, kind, replaced(name, declared))
    assert f"is damaged: /{name} declares {math.prod(shape):,} values, far more than the file stores" in refusal(path)
    code, _, err = run_main(["info", path])  # (which reads /labels whole)
    assert code != 0 and error_line(err).startswith(f"Error: {path} is damaged: /{name} declares ")


@pytest.mark.parametrize("kind", ["flat", pytest.param("hnsw", marks=needs_faiss)])
@pytest.mark.parametrize("label", [9, -7])
def test_labels_outside_the_classes_are_refused_by_load_and_by_an_update(built, tmp_path, kind, label):
    """An index update with the descriptors file unchanged compares the labels by class name: an
    IndexError's traceback."""
    def edit(f):
        f["labels"][0] = label
    path = edited(built, tmp_path, kind, edit)
    assert "is damaged: /labels holds indices outside /classes (2 classes)" in refusal(path)
    with pytest.raises(VggfeatError, match="/labels holds indices outside /classes"):
        update_index(path, tmp_path / "db.h5")
    code, _, err = run_main(["index", tmp_path / "db.h5", path, "--update", "--quiet"])
    assert code != 0 and error_line(err).startswith(f"Error: {path} is damaged: /labels holds indices outside")


def test_an_update_refuses_labels_of_an_index_that_names_no_class(built, tmp_path):
    """Labels without class names load (an index built from arrays holds them), but an index to
    update was built from a descriptors file, which names them: an IndexError's traceback."""
    def edit(f):
        del f["classes"]
        f.create_dataset("classes", shape=(0,), dtype=h5py.string_dtype())
    path = edited(built, tmp_path, "flat", edit)
    with pytest.raises(VggfeatError, match=f"{path} is damaged: /labels holds indices outside /classes \\(0 classes\\)"):
        update_index(path, tmp_path / "db.h5")


def test_an_index_whose_read_after_disagrees_with_its_paths_is_refused_by_an_update(built, tmp_path):
    """An IndexError's traceback."""
    path = edited(built, tmp_path, "flat", replaced("read_after", lambda old, f: old[:-2]))
    with pytest.raises(VggfeatError, match="/read_after holds 298 rows, /paths 300; build it again"):
        update_index(path, tmp_path / "db.h5")


def test_classes_named_twice_are_refused(built, tmp_path):
    """An update compares labels by class name: two of one name would take one for the other."""
    path = edited(built, tmp_path, "flat", lambda f: f["classes"].__setitem__(1, "a"))
    assert "a class is named twice" in refusal(path)


@needs_faiss
def test_search_parameters_that_loading_refuses_are_refused_when_building():
    X = np.abs(np.random.default_rng(2).normal(size=(40, 16))).astype(np.float32)
    for ef_search in (0, 2**22):
        with pytest.raises(VggfeatError, match=f"ef_search from 1 to {2**20}; got 16, {ef_search}"):
            build_index(X, [str(i) for i in range(len(X))], CONFIG, kind="hnsw", ef_search=ef_search)


@needs_faiss
@pytest.mark.parametrize("hnsw_m", [1, 513, 2.5, 2**31 - 1])
def test_hnsw_links_that_loading_refuses_are_refused_when_building(hnsw_m):
    """M 1 was a segmentation fault as the vectors were added, 2.5 a TypeError, 2^31 - 1 a C++ exception."""
    X = np.abs(np.random.default_rng(2).normal(size=(40, 16))).astype(np.float32)
    with pytest.raises(VggfeatError, match=f"hnsw_m must be a whole number from 2 to 512, got {hnsw_m}"):
        build_index(X, [str(i) for i in range(len(X))], CONFIG, kind="hnsw", hnsw_m=hnsw_m)


@needs_faiss
def test_index_refuses_more_hnsw_links_than_any_use_takes(tmp_path):
    """--hnsw-m 10^5 made an index of 300 descriptors of 240 MB; 2^31 - 1 was a traceback."""
    write_described(tmp_path / "db.h5")
    for hnsw_m in ("513", str(2**31 - 1)):
        code, _, err = run_main(["index", tmp_path / "db.h5", tmp_path / "db.index", "--kind", "hnsw", "--hnsw-m", hnsw_m])
        assert code == 2 and f"Invalid value for '--hnsw-m': {hnsw_m} is not in the range 2<=x<=512" in err
        assert not (tmp_path / "db.index").exists()
    code, out, _ = run_main(["index", tmp_path / "db.h5", tmp_path / "db.index", "--kind", "hnsw", "--hnsw-m", "512",
                             "--quiet"])
    assert code == 0 and "hnsw index of 300 descriptors" in out


@needs_faiss
def test_an_index_of_more_hnsw_links_than_building_takes_now_is_still_searched(built, tmp_path):
    """An index that an older vggfeat built with --hnsw-m above 512 (its parameters and FAISS's
    graph agree, its checksum holds) holds what it cost already: it loads and is searched, where it
    was refused as damaged for a bound that only building takes."""
    import faiss

    index = VectorIndex.load(built["hnsw"])
    graph = faiss.IndexHNSWFlat(16, 600, faiss.METRIC_INNER_PRODUCT)
    graph.add(index.reconstruct(np.arange(index.rows)))
    index.faiss_index, index.params = graph, {**index.params, "hnsw_m": 600}
    index.save(tmp_path / "hnsw.index")
    loaded = VectorIndex.load(tmp_path / "hnsw.index")
    assert loaded.params["hnsw_m"] == 600
    _, rows = loaded.search(index.reconstruct(np.arange(3)), k=1)
    assert rows[:, 0].tolist() == [0, 1, 2]


def test_an_index_of_posteriors_is_not_searched_with_query_images(built, tmp_path):
    """An index of classify's posteriors records no layer to describe query images with: the
    refusal said the database was to be described and indexed again, which changes nothing."""
    posteriors = {**CONFIG, "dense": True, "multi_crop": False}
    for name in ("layer", "pooling", "aggregate"):
        posteriors.pop(name, None)
    path = edited(built, tmp_path, "flat", set_attribute("config", json.dumps(posteriors)))
    write_rgb(tmp_path / "query.png", 32, 32)
    code, _, err = run_main(["search", path, tmp_path / "query.png", "--device", "cpu"])
    assert code == 2 and "holds posteriors ('vggfeat classify'), to which query images are not described" in err


def test_build_index_refuses_what_it_would_save_as_an_index_that_loading_refuses(tmp_path):
    """Labels of another length built and saved, then the file was "damaged"; a Path among the
    paths failed in h5py as it was saved; an unfitted whitening was an AttributeError; a path given
    twice was saved, and its index refused as it was loaded."""
    X = np.random.default_rng(0).random((30, 16), dtype=np.float32)
    paths = [f"{i}.jpg" for i in range(30)]
    for kwargs, said in (({"labels": [0, 1]}, r"need one of labels per path, got \(2,\) for 30 paths"),
                         ({"paths": [Path(p) for p in paths]}, "paths must be text"),
                         ({"config": None}, "config must be the descriptors' extraction configuration"),
                         ({"whitening": PCAWhitening()}, "and whitening fitted"),
                         ({"paths": [*paths[:29], "0.jpg"]}, r"each path must be given once \(a region of an image "
                                                             r"is a path of its own, .*\), got 0.jpg twice \(rows 0 and 29\)")):
        with pytest.raises(VggfeatError, match=said):
            build_index(X, **{"paths": paths, "config": CONFIG, **kwargs})


def test_queries_and_rows_of_other_shapes_or_kinds_are_refused_saying_what_is_taken(tmp_path):
    """FAISS refused queries of another width with a bare AssertionError; FeatureFile.read took
    row 1.5 for row 1."""
    X = np.random.default_rng(0).random((30, 16), dtype=np.float32)
    index = build_index(X, [f"{i}.jpg" for i in range(30)], CONFIG)
    with pytest.raises(VggfeatError, match=r"prepared queries are \[n, 16\] \(prepare\(X\) makes them\), got shape \(2, 8\)"):
        index.search(np.ones((2, 8), dtype=np.float32), 3)
    assert index.search(index.prepare(X[:2]), 3)[1][:, 0].tolist() == [0, 1]
    features = write_features(tmp_path / "f.h5", X, [f"{i}.jpg" for i in range(30)], np.zeros(30, dtype=int), ["a"])
    with FeatureFile(features) as f:
        with pytest.raises(VggfeatError, match="a list of row indices or a boolean mask, got float64 of shape"):
            f.read([1.5])
        assert f.read([]).shape == (0, 16) and f.read([2]).shape == (1, 16)


@pytest.mark.parametrize("kind", ["flat", pytest.param("hnsw", marks=needs_faiss)])
def test_an_index_holding_a_path_twice_is_refused_by_load_search_and_an_update(built, tmp_path, kind):
    """Searches found the image twice; an update from its unchanged descriptors file said
    '1 added'."""
    def edit(f):
        f["paths"][1] = f["paths"][0]
    path = edited(built, tmp_path, kind, edit)
    said = f"{path} is damaged: /paths holds a/0000.jpg twice (rows 0 and 1); build it again with 'vggfeat index'"
    assert refusal(path) == said
    code, out, err = run_main(["index", tmp_path / "db.h5", path, "--update", "--quiet"])
    assert code != 0 and error_line(err) == f"Error: {said}" and "added" not in out
    code, _, err = run_main(["search", path, "--queries", tmp_path / "db.h5", "-k", "3"])
    assert code != 0 and error_line(err) == f"Error: {said}"


def test_regions_of_one_image_are_rows_of_their_own(tmp_path):
    """Several regions of one image are several paths (image#xywh=...), which an index holds and
    finds, each once."""
    X = np.random.default_rng(0).random((4, 16), dtype=np.float32)
    paths = [f"a.jpg#xywh={x},0,10,10" for x in (0, 10, 20)] + ["a.jpg"]
    build_index(X, paths, CONFIG).save(tmp_path / "regions.index")
    index = VectorIndex.load(tmp_path / "regions.index")
    assert index.paths == paths
    assert sorted(search(index, X[:1], ["q"], k=4)[0].paths) == sorted(paths)


def test_a_descriptors_file_holding_a_path_twice_is_refused_by_index_and_an_update(built, tmp_path):
    """Its index was built, and loading it then refused; an update took the later row of the path
    and counted the earlier one as new."""
    path = edited(built, tmp_path, "flat", lambda f: None)
    with h5py.File(tmp_path / "db.h5", "r+") as f:
        f["paths"][1] = f["paths"][0]
    said = (f"Error: {tmp_path / 'db.h5'}: /paths holds a/0000.jpg twice (rows 0 and 1), where an index holds each "
            "image once; describe the images again, each once (extract --overwrite)")
    code, _, err = run_main(["index", tmp_path / "db.h5", tmp_path / "new.index"])
    assert code != 0 and error_line(err) == said and not (tmp_path / "new.index").exists()
    code, out, err = run_main(["index", tmp_path / "db.h5", path, "--update", "--quiet"])
    assert code != 0 and error_line(err) == said and "added" not in out
    assert VectorIndex.load(path).paths == FeatureFile(built["flat"].with_name("db.h5")).paths  # left as it was


@pytest.mark.parametrize("name, value", [
    ("root", 5),  # the images' folder "5" (search's montage looked there)
    ("root", np.array([1, 2])),
    ("root", np.array(["/a", "/b"], dtype=h5py.string_dtype())),
    ("root", np.bytes_(b"/ph\xffotos")),  # not UTF-8
    ("features", 7),  # an update compared the descriptors file's name with "7"
    ("created", np.float64(1.5)),
])
def test_a_text_attribute_of_another_kind_is_refused_by_load_and_info(built, tmp_path, name, value):
    path = edited(built, tmp_path, "flat", set_attribute(name, value))
    assert f"is damaged: its {name} is " in refusal(path)
    code, _, err = run_main(["info", path])
    # (info, which reads a file's attributes to tell its kind, cannot tell it by bytes that are not UTF-8)
    said = f"Error: {path} " if isinstance(value, bytes) else f"Error: {path} is damaged: its {name} is "
    assert code != 0 and error_line(err).startswith(said)


def test_a_root_written_as_a_fixed_length_string_is_read_as_its_text(built, tmp_path):
    """h5py reads an HDF5 fixed-length string (as other tools write one) as bytes: it was taken as
    the folder "b'/photos'", and an update then refused the index as one of other images."""
    path = edited(built, tmp_path, "flat", set_attribute("root", np.bytes_(b"/photos")))
    assert VectorIndex.load(path).root == "/photos"
    code, out, err = run_main(["index", tmp_path / "db.h5", path, "--update", "--quiet"])
    assert code == 0 and "is up to date with" in out, err
