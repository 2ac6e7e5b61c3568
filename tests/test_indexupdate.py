"""``vggfeat index --update``: an index brought up to date with its descriptors file after
``extract --update``, holding what an index built anew would, without building it again."""

from __future__ import annotations

import json
import os
import time

import h5py
import numpy as np
import pytest

from imagefiles import write_rgb
from runhelpers import FAST, error_line, run_main
from vggfeat.errors import VggfeatError
from vggfeat.index import VectorIndex, build_index, faiss_available, index_features
import vggfeat.indexupdate
from vggfeat.indexupdate import _lists_fit_rows, update_index
from vggfeat.whitening import PCAWhitening

needs_faiss = pytest.mark.skipif(not faiss_available(), reason="faiss not installed (pip install faiss-cpu)")
CONFIG = {"model": "vgg16", "weights_sha256": "abc", "layer": "conv5_3", "pooling": "gem", "scales": [224],
          "aggregate": "mean", "flip": False, "preprocessing": {}, "dim": 16}
CHEAP = [*FAST, "--layer", "conv3_1", "--quiet"]


def write_described(path, rows: dict[str, tuple[np.ndarray, float]], classes=("a", "b")) -> None:
    """A descriptors file of ``rows``, path to (descriptor, when it was described), in path order,
    each labelled by its folder."""
    paths = sorted(rows)
    string = h5py.string_dtype("utf-8")
    with h5py.File(path, "w") as f:
        f["features"] = np.array([rows[p][0] for p in paths], dtype=np.float32)
        f.create_dataset("paths", data=paths, dtype=string)
        f["labels"] = np.array([classes.index(p.split("/")[0]) for p in paths], dtype=np.int32)
        f.create_dataset("classes", data=list(classes), dtype=string)
        f["read_after"] = np.array([rows[p][1] for p in paths], dtype=np.float64)
        for name in ("paths", "errors"):
            f.create_dataset(f"failed/{name}", shape=(0,), dtype=string)
        f.attrs.update({"config": json.dumps(CONFIG), "complete": True, "input_root": "/photos"})


def grown(seed: int = 0, rows: int = 2000):
    """A collection's rows, then the same collection grown: 300 new images, 40 gone, 25 described
    again (edited: another descriptor, a later time)."""
    rng = np.random.default_rng(seed)
    before = {f"{'ab'[i % 2]}/{i:05d}.jpg": (np.abs(rng.normal(size=16)), 100.0) for i in range(rows)}
    after = dict(list(before.items())[40:])
    for path in list(after)[:25]:
        after[path] = (np.abs(rng.normal(size=16)), 200.0)
    after.update({f"{'ab'[i % 2]}/{i:05d}.jpg": (np.abs(rng.normal(size=16)), 200.0) for i in range(rows, rows + 300)})
    return before, after


def vectors_by_path(index: VectorIndex) -> dict[str, np.ndarray]:
    return dict(zip(index.paths, index.reconstruct(np.arange(index.rows))))


@pytest.mark.parametrize("whitened", [False, True])
def test_a_flat_index_updated_is_the_one_built_anew(tmp_path, whitened):
    before, after = grown()
    write_described(tmp_path / "db.h5", before)
    whitening = PCAWhitening(dim=8).fit(np.array([row for row, _ in before.values()]), config=CONFIG) if whitened else None
    index_features(tmp_path / "db.h5", backend="numpy", whitening=whitening).save(tmp_path / "db.index")
    write_described(tmp_path / "db.h5", after)  # after extract --update
    done = []
    result = update_index(tmp_path / "db.index", tmp_path / "db.h5", progress=done.append)
    assert (result.rows, result.added, result.removed, result.changed, result.rebuilt) == (2260, 300, 40, 25, True)
    assert sum(done) == 2260  # flat: every row, which costs what reading the index would
    updated = VectorIndex.load(tmp_path / "db.index")
    anew = index_features(tmp_path / "db.h5", backend="numpy", whitening=whitening)  # the index keeps its whitening
    assert updated.dim == (8 if whitened else 16)
    assert VectorIndex.load(tmp_path / "db.index", vectors=False).vectors is None  # what the update reads
    assert updated.paths == anew.paths and updated.labels.tolist() == anew.labels.tolist()
    np.testing.assert_array_equal(updated.vectors, anew.vectors)
    assert updated.read_after.tolist() == [after[path][1] for path in updated.paths]
    written = os.stat(tmp_path / "db.index").st_mtime_ns
    assert update_index(tmp_path / "db.index", tmp_path / "db.h5").added == 0  # up to date: nothing to do
    assert os.stat(tmp_path / "db.index").st_mtime_ns == written


@pytest.mark.parametrize("kind", ["flat", pytest.param("hnsw", marks=needs_faiss)])
def test_the_same_rows_labelled_otherwise_are_relabelled_in_a_file_written_anew(tmp_path, monkeypatch, kind):
    """A list's labels changed (extract --update relabels its rows): the index said 'up to date' and
    kept the old labels, which retrieval-eval scores by. And an index whose descriptors file is only
    written anew, rows the same, recorded it by writing its attribute in place, which a kill midway
    left unreadable: the file is now written anew and renamed, never opened to write."""
    before, _ = grown(rows=60)
    write_described(tmp_path / "db.h5", before)
    index_features(tmp_path / "db.h5", kind=kind).save(tmp_path / "db.index")
    write_described(tmp_path / "db.h5", before, classes=("a", "b", "c"))
    with h5py.File(tmp_path / "db.h5", "a") as f:  # the same paths, ten of them class c now
        f["labels"][:10] = 2
    opened = []
    open_h5 = vggfeat.indexupdate.open_h5
    monkeypatch.setattr(vggfeat.indexupdate, "open_h5", lambda path, mode="r", **kw: opened.append(mode) or open_h5(path, mode, **kw))
    old = os.stat(tmp_path / "db.index").st_ino
    result = update_index(tmp_path / "db.index", tmp_path / "db.h5")
    assert (result.added, result.removed, result.changed, result.relabelled) == (0, 0, 0, 10) and "r+" not in opened
    index = VectorIndex.load(tmp_path / "db.index")
    assert index.classes == ["a", "b", "c"] and [index.classes[k] for k in index.labels[:12]] == ["c"] * 10 + ["a", "a"]
    assert index.updated and os.stat(tmp_path / "db.index").st_ino != old and index.rows == 60
    os.utime(tmp_path / "db.h5", (time.time() + 9, time.time() + 9))
    assert update_index(tmp_path / "db.index", tmp_path / "db.h5").relabelled == 0 and "r+" not in opened
    assert VectorIndex.load(tmp_path / "db.index").paths == sorted(before)


def test_an_ivfpq_index_is_said_to_have_outgrown_its_lists_only_16_times_the_rows_they_suit():
    """Its default lists are at most rows // 39: an index of 1,000 rows (25 lists) was said, at
    1,001, to suit 39 rows, and to be built again, which gave the same 25 lists."""
    def grown_to(rows: int, nlist: int) -> int:
        return _lists_fit_rows(VectorIndex(paths=[""] * rows, config=CONFIG, kind="ivfpq", params={"nlist": nlist}))
    assert grown_to(1_001, 25) == 0 and grown_to(16 * 975, 25) == 975
    assert grown_to(100_000, 1_264) == 0 and grown_to(16 * 99_856, 1_264) == 99_856  # 4 sqrt(rows): 1,264 at 100,000


@needs_faiss
@pytest.mark.parametrize("kind", ["ivfpq", "hnsw"])
def test_an_approximate_index_appends_new_rows_and_adds_every_row_again_when_some_are_gone(tmp_path, kind):
    """New rows only: appended, the vectors it held untouched. Rows gone or described again:
    IVF-PQ adds every row again with its trained lists and codebooks; HNSW builds its graph anew.
    Either way each row's own descriptor finds it."""
    before, after = grown()
    write_described(tmp_path / "db.h5", before)
    index_features(tmp_path / "db.h5", kind=kind, nlist=8, m=4).save(tmp_path / "db.index")
    held = vectors_by_path(VectorIndex.load(tmp_path / "db.index"))
    appended = {**before, **{path: row for path, row in after.items() if path not in before}}
    write_described(tmp_path / "db.h5", appended)
    result = update_index(tmp_path / "db.index", tmp_path / "db.h5")
    assert (result.added, result.removed, result.changed, result.rebuilt) == (300, 0, 0, False)
    index = VectorIndex.load(tmp_path / "db.index")
    assert index.paths[: len(before)] == sorted(before) and index.rows == len(appended)
    for path, vector in list(vectors_by_path(index).items())[: len(before)]:
        np.testing.assert_array_equal(vector, held[path])
    write_described(tmp_path / "db.h5", after)
    result = update_index(tmp_path / "db.index", tmp_path / "db.h5")
    assert (result.added, result.removed, result.changed, result.rebuilt) == (0, 40, 25, True)
    index = VectorIndex.load(tmp_path / "db.index")
    assert index.paths == sorted(after) and index.params == VectorIndex.load(tmp_path / "db.index").params
    # The same training (IVF-PQ): a row kept has the code it had; one described again, its new one.
    changed = {path for path in after if after[path][1] == 200.0 and path in before}
    for path, vector in vectors_by_path(index).items():
        if path in changed:
            assert not np.array_equal(vector, held[path])
        elif path in before:
            np.testing.assert_array_equal(vector, held[path])
    if kind == "hnsw":  # the graph built anew finds each row by its own descriptor
        _, rows = index.search(index.prepare(np.array([after[path][0] for path in index.paths])), 1)
        assert (rows[:, 0] == np.arange(index.rows)).mean() >= 0.95


def test_an_update_is_refused_for_another_descriptors_file_and_an_index_that_keeps_no_times(tmp_path):
    before, _ = grown(rows=50)
    write_described(tmp_path / "db.h5", before)
    index_features(tmp_path / "db.h5").save(tmp_path / "db.index")
    with h5py.File(tmp_path / "db.h5", "a") as f:
        f.attrs["config"] = json.dumps({**CONFIG, "layer": "conv4_3"})
    with pytest.raises(VggfeatError, match="described differently from the indexed database: layer: conv5_3 expected"):
        update_index(tmp_path / "db.index", tmp_path / "db.h5")
    (tmp_path / "db.h5").rename(tmp_path / "shard.h5")
    with pytest.raises(VggfeatError, match=f"db.index was built from {tmp_path / 'db.h5'}, not .*shard.h5: an index is "
                                           "updated from the descriptors file it was built from"):
        update_index(tmp_path / "db.index", tmp_path / "shard.h5")
    (tmp_path / "shard.h5").rename(tmp_path / "db.h5")
    with h5py.File(tmp_path / "db.h5", "a") as f:
        f.attrs.update({"config": json.dumps(CONFIG), "input_root": "/elsewhere"})
    with pytest.raises(VggfeatError, match="holds images under /photos, .* under /elsewhere: an index is updated from"):
        update_index(tmp_path / "db.index", tmp_path / "db.h5")
    X = np.array([row for row, _ in before.values()], dtype=np.float32)
    build_index(X, list(before), CONFIG).save(tmp_path / "arrays.index")
    with pytest.raises(VggfeatError, match="does not record when its rows were described .* build it again without --update"):
        update_index(tmp_path / "arrays.index", tmp_path / "db.h5")
    assert "  update       not possible: it does not record when its rows were described (build it again)" in run_main(
        ["info", tmp_path / "arrays.index"])[1]


def test_index_update_after_extract_update_from_the_command_line(tmp_path, monkeypatch):
    """extract, index; the collection grows, an image is edited, one is removed; extract --update,
    index --update: the descriptors an index built anew holds, in the same place as the search finds them."""
    monkeypatch.chdir(tmp_path)
    for name, seed in (("a/1.png", 1), ("a/2.png", 2), ("b/3.png", 3)):
        (tmp_path / "photos" / name).parent.mkdir(parents=True, exist_ok=True)
        write_rgb(tmp_path / "photos" / name, 120, 150, seed=seed)
    assert run_main(["extract", "photos", "db.h5", *CHEAP])[0] == 0
    assert run_main(["index", "db.h5", "db.index", "-q"])[0] == 0
    (tmp_path / "photos" / "a" / "2.png").unlink()
    write_rgb(tmp_path / "photos" / "b" / "4.png", 130, 140, seed=4)
    write_rgb(tmp_path / "photos" / "b" / "3.png", 120, 150, seed=33)  # edited since it was described
    os.utime(tmp_path / "photos" / "b" / "3.png", (time.time() + 5, time.time() + 5))
    assert run_main(["extract", "photos", "db.h5", "--update", *CHEAP])[0] == 0
    code, _, err = run_main(["index", "db.h5", "db.index", "-q"])  # the build command again: pointed to --update
    assert code == 2 and error_line(err) == ("Error: db.index already exists, made from db.h5 before it last changed: "
                                             "'vggfeat index db.h5 db.index --update' brings it up to date, or --overwrite "
                                             "replaces it")
    code, out, err = run_main(["index", "db.h5", "db.index", "--update", "-q"])
    assert code == 0 and out == "updated db.index: 1 added, 1 removed, 1 described again; 3 descriptors\n", err
    code, out, err = run_main(["index", "db.h5", "db.index", "-q"])  # then finds it up to date
    assert code == 0 and out.startswith("db.index already holds the index of this command on db.h5, unchanged since"), err
    assert run_main(["index", "db.h5", "anew.index", "-q"])[0] == 0
    assert run_main(["index", "db.h5", "db.index", "--update"])[1] == "db.index is up to date with db.h5: 3 descriptors\n"
    os.utime("db.h5", (time.time() + 9, time.time() + 9))  # rows the same, the file not: up to date, for the record too
    assert run_main(["index", "db.h5", "db.index", "--update"])[1] == "db.index is up to date with db.h5: 3 descriptors\n"
    assert run_main(["index", "db.h5", "db.index"])[1].startswith("db.index already holds the index of this command")
    code, out, _ = run_main(["info", "db.index"])
    made = [line for line in out.splitlines() if line.startswith("  made")][0]
    assert code == 0 and made.startswith("  made         20") and " from db.h5, updated " in made and "  update       'vggfeat index FEATURES INDEX --update' after " \
        "'extract --update'" in out
    updated, anew = VectorIndex.load("db.index"), VectorIndex.load("anew.index")
    assert updated.created <= updated.updated and anew.updated == ""  # the build's date kept
    assert updated.paths == ["a/1.png", "b/3.png", "b/4.png"] == anew.paths
    np.testing.assert_array_equal(updated.vectors, anew.vectors)
    for args, error in (
        (["index", "db.h5", "db.index", "--update", "--kind", "hnsw", "--whiten", "w.h5"],
         "--update keeps the index's own settings: drop --whiten and --kind, or build the index again without --update "
         "(see 'vggfeat index --help')"),
        (["index", "db.h5", "db.index", "--update", "--nlist", "4", "--kind", "hnsw", "--whiten", "w.h5"],
         "--update keeps the index's own settings: drop --whiten, --kind and --nlist, or build the index again "
         "without --update (see 'vggfeat index --help')"),
        (["index", "db.h5", "none.index", "--update"], "none.index not found: --update brings an existing index up to date"),
    ):
        code, _, err = run_main(args)
        assert code == 2 and error_line(err) == f"Error: {error}", args
