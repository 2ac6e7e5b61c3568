"""Shards and merging: ``extract --shard K/N`` on N GPUs or machines, then ``vggfeat merge``, gives the
file one run over the whole collection gives; a merge that could give anything else is refused
before a byte is written.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest

from runhelpers import (FAST, assert_same_output, command, error_line, read_output, run_main,
                        write_labelled_folder)
from svmhelpers import misplace_a_chunk
import vggfeat.job
import vggfeat.parts
from vggfeat import ExtractionJob, Extractor, ImageSet, VggfeatError, find_images
from vggfeat.discover import ShardOf
from vggfeat.features import FeatureFile
from vggfeat.merge import merge_shards

CHEAP = "conv1_1"  # merging is bookkeeping: the first layer is enough and ~50x cheaper than fc7


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("labelled")
    write_labelled_folder(root)
    return root


@pytest.fixture(scope="module")
def extractor(random_vgg16):
    return Extractor(random_vgg16, scales=[224], flip=False, device="cpu", layer=CHEAP)


@pytest.fixture(scope="module")
def whole(labelled, extractor, tmp_path_factory):
    """One run over the whole collection: what the merged shards must equal."""
    output = tmp_path_factory.mktemp("whole") / "whole.h5"
    ExtractionJob(extractor, find_images(labelled), output).run()
    return read_output(output)


def write_shards(folder, root, extractor, count: int, **options) -> list:
    paths = []
    for index in range(1, count + 1):
        path = folder / f"shard{index}of{count}.h5"
        ExtractionJob(extractor, find_images(root).shard(index, count), path, **options).run()
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def three_shards(labelled, extractor, tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("shards"), labelled, extractor, 3)


# --------------------------------------------------------------------------- what a user relies on


@pytest.mark.parametrize("images", [1, 5, 6, 7, 100])
@pytest.mark.parametrize("count", [1, 2, 3, 8])
def test_shards_cover_every_image_once_in_order(labelled, images, count):
    collection = find_images(labelled)
    collection = type(collection)(collection.root, tuple(f"{i:03d}.jpg" for i in range(images)),
                                  np.zeros(images, dtype=np.int32), ("only",))
    shards = [collection.shard(index, count) for index in range(1, count + 1)]
    assert sum((shard.paths for shard in shards), ()) == collection.paths
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert all(shard.classes == collection.classes for shard in shards)


def test_a_shard_holds_its_block_and_knows_its_collection():
    """What a process describing a shard is sent: its block's images only, and what its file must
    record of the whole collection for the merge."""
    names = {f"{i}\\xe9.jpg": f"{i}\udce9.jpg" for i in (1, 5)}  # two names that are not UTF-8
    collection = ImageSet(Path("/data"), tuple(f"{i}\\xe9.jpg" for i in range(8)), np.arange(8, dtype=np.int32) % 2,
                          ("a", "b"), names)
    shard = collection.shard(2, 2)
    assert shard.paths == collection.paths[4:] and shard.labels.tolist() == [0, 1, 0, 1]
    assert shard.file_names == {"5\\xe9.jpg": "5\udce9.jpg"} and shard.file(1) == Path("/data/5\udce9.jpg")
    assert shard.shard_of == ShardOf(2, 2, 8, collection.digest()) and collection.shard_of is None
    assert shard.digest() != collection.digest()  # its own file's images_sha256: the block's
    # A machine's shard cut again for its GPUs: blocks of the shard, whose collection the shard is.
    block = shard.shard(2, 2)
    assert block.paths == collection.paths[6:] and block.file(1) == Path("/data/7\\xe9.jpg")
    assert block.shard_of == ShardOf(2, 2, 4, shard.digest())


def test_merged_shards_equal_one_run(three_shards, whole, tmp_path):
    reported = []
    result = merge_shards(reversed(three_shards), tmp_path / "merged.h5", progress=lambda *p: reported.append(p))  # any order
    assert (result.rows, result.failed, result.shards) == (5, 1, 3)
    assert sum(rows for rows, _ in reported) == 5 and {total for _, total in reported} == {5}
    merged = read_output(tmp_path / "merged.h5")
    # Batches differ between shards and the whole run; the descriptors agree to float rounding.
    assert_same_output(merged, whole, atol=1e-5)
    for key in ("images_found", "images_sha256", "input_root", "model", "weights_sha256"):
        assert merged["attrs"][key] == whole["attrs"][key], key
    assert not {"shard_index", "shard_count", "collection_images", "collection_sha256"} & set(merged["attrs"])
    assert json.loads(merged["attrs"]["merged_from"]) == [path.name for path in three_shards]


def test_a_shard_file_is_an_ordinary_features_file_of_its_block(three_shards, whole):
    second = read_output(three_shards[1])
    assert second["paths"] == whole["paths"][2:3]  # the 3rd and 4th of 6 images: dogs/broken.jpg, dogs/c.png
    assert (second["failed_paths"], second["failed_labels"]) == (["dogs/broken.jpg"], [1])
    assert (second["attrs"]["shard_index"], second["attrs"]["shard_count"]) == (2, 3)
    assert second["attrs"]["collection_images"] == 6 and second["attrs"]["images_found"] == 2
    assert second["attrs"]["collection_sha256"] == whole["attrs"]["images_sha256"]


def test_more_shards_than_images_gives_empty_shards_that_merge(labelled, extractor, whole, tmp_path):
    shards = write_shards(tmp_path, labelled, extractor, 8)
    assert read_output(shards[0])["features"].shape == (0, whole["features"].shape[1])
    merge_shards(shards, tmp_path / "merged.h5")
    assert_same_output(read_output(tmp_path / "merged.h5"), whole, atol=1e-5)


def test_a_killed_shard_resumes_as_that_shard_only(labelled, extractor, three_shards, tmp_path, monkeypatch):
    output, real_write_part = tmp_path / "s.h5", vggfeat.job.write_part

    def die_on_second_part(folder, start, *args):
        if start > 0:
            raise RuntimeError("simulated kill")
        return real_write_part(folder, start, *args)

    monkeypatch.setattr(vggfeat.job, "write_part", die_on_second_part)
    with pytest.raises(RuntimeError, match="simulated kill"):
        ExtractionJob(extractor, find_images(labelled).shard(3, 3), output, part_images=1).run()
    monkeypatch.undo()
    with pytest.raises(VggfeatError, match=r"shard: 3/3 then, 2/3 now"):
        ExtractionJob(extractor, find_images(labelled).shard(2, 3), output, part_images=1)
    result = ExtractionJob(extractor, find_images(labelled).shard(3, 3), output, part_images=1).run()
    assert result.computed == 1  # of its 2 images, one was in the part written before the kill
    assert_same_output(read_output(output), read_output(three_shards[2]))


def test_a_shard_of_a_collection_grown_since_is_refused_saying_so(labelled, extractor, tmp_path):
    """A job array run again after the collection grew: the refusal was a bare "already exists"."""
    root = tmp_path / "images"
    shutil.copytree(labelled, root)
    ExtractionJob(extractor, find_images(root).shard(1, 2), tmp_path / "s1.h5").run()
    shutil.copy(next(root.rglob("*.png")), root / "added.png")
    with pytest.raises(VggfeatError, match=r"s1.h5 already exists, made with these options as a shard of other images of "
                                           r".*images \(the collection changed since it was cut into shards\): describe "
                                           r"every shard again with --overwrite, or run 'vggfeat extract --update'"):
        ExtractionJob(extractor, find_images(root).shard(1, 2), tmp_path / "s1.h5")


# --------------------------------------------------------------------------- refusals


def refused(shards, output, match: str, **options) -> None:
    with pytest.raises(VggfeatError, match=match):
        merge_shards(shards, output, **options)


def test_missing_or_repeated_shards_are_refused(three_shards, tmp_path):
    output = tmp_path / "merged.h5"
    refused(three_shards[:2], output, r"missing shard 3/3: a merge needs all 3")
    refused([*three_shards, three_shards[0]], output, r"shard 1/3 given more than once")
    assert not output.exists() and list(tmp_path.iterdir()) == []


def test_shards_of_other_runs_are_refused(labelled, extractor, random_vgg16, three_shards, tmp_path):
    other_layer = Extractor(random_vgg16, scales=[224], flip=False, device="cpu", layer="conv1_2")
    (tmp_path / "layer").mkdir()
    refused([*three_shards[:2], write_shards(tmp_path / "layer", labelled, other_layer, 3)[2]], tmp_path / "m.h5",
            r"differ in extraction configuration")
    (tmp_path / "count").mkdir()
    refused([*three_shards[:2], write_shards(tmp_path / "count", labelled, extractor, 4)[3]], tmp_path / "m.h5",
            r"differ in shard count")
    fewer = tmp_path / "fewer"
    write_labelled_folder(fewer)
    (fewer / "top.png").unlink()
    (tmp_path / "images").mkdir()
    refused([*three_shards[:2], write_shards(tmp_path / "images", fewer, extractor, 3)[2]], tmp_path / "m.h5",
            r"differ in image collection")
    assert not (tmp_path / "m.h5").exists()


def test_whole_incomplete_and_foreign_files_are_refused(labelled, extractor, three_shards, tmp_path):
    whole = tmp_path / "whole.h5"
    ExtractionJob(extractor, find_images(labelled), whole).run()
    refused([whole, *three_shards[1:]], tmp_path / "m.h5", r"whole.h5 is not a shard")
    incomplete = tmp_path / "incomplete.h5"
    incomplete.write_bytes(three_shards[0].read_bytes())
    with h5py.File(incomplete, "r+") as f:
        f.attrs["complete"] = False
    refused([incomplete, *three_shards[1:]], tmp_path / "m.h5", r"incomplete")
    (tmp_path / "notes.h5").write_text("not hdf5")
    refused([tmp_path / "notes.h5"], tmp_path / "m.h5", r"notes.h5 is not an HDF5 file")
    refused([tmp_path / "absent.h5"], tmp_path / "m.h5", r"shard file not found")
    damaged = tmp_path / "damaged.h5"  # a flipped bit in HDF5's index of its rows: found as they are copied
    damaged.write_bytes(three_shards[1].read_bytes())
    misplace_a_chunk(damaged, "features")
    refused([three_shards[0], damaged, three_shards[2]], tmp_path / "m.h5",
            r"damaged.h5 is damaged: HDF5 cannot read its /features \(Can't synchronously read data")
    assert not (tmp_path / "m.h5").exists()


def test_an_existing_output_is_kept_unless_overwrite(three_shards, whole, tmp_path):
    output = tmp_path / "merged.h5"
    output.write_text("the user's file")
    refused(three_shards, output, r"already exists; pass --overwrite")
    refused(three_shards, three_shards[2], r"is one of the shards", overwrite=True)
    assert output.read_text() == "the user's file"
    merge_shards(three_shards, output, overwrite=True)
    assert_same_output(read_output(output), whole, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged.h5"]  # no temporary left


def test_a_merge_holds_its_output_as_every_run_writing_one_does(three_shards, whole, tmp_path, monkeypatch):
    """A merge took no lock: an 'extract --update' of the same file meanwhile copied its rows by the
    numbers of the file the merge had replaced (another image's descriptor in 100 of 210 rows,
    complete=True), and an extraction or another merge finishing after it replaced its file."""
    import vggfeat.merge
    from vggfeat.parts import lock_for_rewrite, output_locked

    output = tmp_path / "merged.h5"
    with output_locked(output):  # as an update, an extraction or another merge into it holds it
        refused(three_shards, output, "another vggfeat run is writing .*merged.h5 \\(lock held on")
    with output_locked(three_shards[1]):  # a shard written again (--overwrite): the merge took its old file
        refused(three_shards, output, "another vggfeat run is writing .*shard2of3.h5")
    real = vggfeat.merge._copy_rows

    def as_another_run_begins(*args):
        with pytest.raises(VggfeatError, match="another vggfeat run is writing"):
            lock_for_rewrite(output)  # what an update, an extraction or another merge takes first
        real(*args)

    monkeypatch.setattr(vggfeat.merge, "_copy_rows", as_another_run_begins)
    merge_shards(three_shards, output)
    assert_same_output(read_output(output), whole, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged.h5"]  # the lock's folder removed
    # The same merge again has nothing to do, and takes no lock (whose folder a read-only disk refuses).
    monkeypatch.setattr(vggfeat.parts, "output_locked", lambda output: pytest.fail("locked"))
    assert merge_shards(three_shards, output).already_done


def test_shards_written_before_failures_kept_their_labels_merge(three_shards, whole, tmp_path):
    """/failed/labels was added to the schema later: shards without it merge, their failures'
    labels unknown (-1), and the merged file reads as any other."""
    shards = []
    for path in three_shards:
        shards.append(tmp_path / path.name)
        shards[-1].write_bytes(path.read_bytes())
        with h5py.File(shards[-1], "r+") as f:
            del f["failed/labels"]
    merge_shards(shards, tmp_path / "merged.h5")
    merged = read_output(tmp_path / "merged.h5")
    assert (merged["failed_paths"], merged["failed_labels"]) == (whole["failed_paths"], [-1]) and whole["failed_labels"] == [1]
    with FeatureFile(shards[1]) as old, FeatureFile(three_shards[1]) as new:
        assert [(failed.paths, failed.labels.tolist()) for failed in (old.failed(), new.failed())] == [(["dogs/broken.jpg"], [-1]),
                                                                                                         (["dogs/broken.jpg"], [1])]
        assert old.failed().reasons == new.failed().reasons == whole["failed_errors"] and whole["failed_errors"][0]


# --------------------------------------------------------------------------- the commands


def test_extract_shards_then_merge_at_the_command_line(labelled, tmp_path):
    for index in (1, 2):
        code, _, err = run_main(["extract", labelled, tmp_path / f"s{index}.h5", *FAST, "--shard", f"{index}/2"])
        assert code == 0, err
        assert f"shard {index}/2: 3 of the 6 images" in err and "vggfeat merge" in err
    code, _, err = run_main(["extract", labelled, tmp_path / "whole.h5", *FAST, "-q"])
    assert code == 0, err
    code, _, err = run_main(["merge", tmp_path / "s2.h5", tmp_path / "s1.h5", tmp_path / "merged.h5"])
    assert code == 0 and "5 descriptors from 2 shards, 1 failed" in err, err
    assert_same_output(read_output(tmp_path / "merged.h5"), read_output(tmp_path / "whole.h5"), atol=1e-5)
    code, out, _ = run_main(["info", tmp_path / "s1.h5"])
    assert code == 0 and "shard        1 of 2 (the collection has 6 images" in out
    code, out, _ = run_main(["info", tmp_path / "merged.h5"])
    assert code == 0 and "of 6 images found" in out and "merged       from 2 shards by vggfeat merge" in out


def test_a_merged_file_says_how_each_shard_was_made(labelled, tmp_path):
    """A retry of one shard's failures is that shard's, not the whole file's."""
    for index in (1, 2):
        assert run_main(["extract", labelled, tmp_path / f"s{index}.h5", *FAST, "--shard", f"{index}/2", "-q"])[0] == 0
    with h5py.File(tmp_path / "s2.h5", "r+") as f:  # as a retry of shard 2 records it
        f.attrs.update(retry_command="vggfeat extract ... --shard 2/2 --retry-failed", failures_retried="2026-11-23")
    assert run_main(["merge", tmp_path / "s1.h5", tmp_path / "s2.h5", tmp_path / "merged.h5"])[0] == 0
    attrs = read_output(tmp_path / "merged.h5")["attrs"]
    shards = json.loads(attrs["shards"])
    assert [(s["shard"], s["file"], s["command"].split("--shard ")[1][:3]) for s in shards] == [(1, "s1.h5", "1/2"), (2, "s2.h5", "2/2")]
    assert "retry_command" not in attrs and "retry_command" not in shards[0] and shards[1]["failures_retried"] == "2026-11-23"
    assert "command" not in attrs  # the shards' commands differ (--shard K/N): none is the file's
    assert attrs["vggfeat_version"] == shards[0]["vggfeat_version"]  # alike in all shards: the file's
    code, out, _ = run_main(["info", tmp_path / "merged.h5"])
    assert code == 0, out
    assert "commands     one per shard ('vggfeat info --json' lists them); shard 1's: vggfeat extract" in out
    assert "merged       from 2 shards by vggfeat merge" in out
    assert "retried      shard 2/2: 2026-11-23 by vggfeat extract ... --shard 2/2 --retry-failed" in out


@pytest.mark.parametrize("value, message", [
    ("0/4", "1 <= K <= N"), ("5/4", "1 <= K <= N"), ("2", "expected K/N"), ("a/b", "expected K/N"),
])
def test_bad_shard_options_are_refused_before_work(labelled, tmp_path, value, message):
    code, _, err = run_main(["extract", labelled, tmp_path / "s.h5", *FAST, "--shard", value])
    assert code == 2 and message in error_line(err)
    assert list(tmp_path.iterdir()) == []


def test_merge_without_an_output_is_refused(three_shards):
    code, _, err = run_main(["merge", three_shards[0]])
    assert code == 2 and "expected the shard files and then OUTPUT" in error_line(err)
    code, _, err = run_main(["merge", *three_shards])  # forgot OUTPUT: the last shard would be replaced
    assert code == 2 and "already exists" in error_line(err)
    code, _, err = run_main(["merge", *three_shards, three_shards[0].with_name("merged.csv")])
    assert code == 2 and "merged.csv names a .csv file, but descriptor files are HDF5: name it merged.h5" in error_line(err)
    assert not three_shards[0].with_name("merged.csv").exists()


def test_shards_run_at_once_in_separate_processes_then_merge(labelled, tmp_path):
    """The intended use: one process per GPU (here both on the CPU), side by side on one folder."""
    options = [*FAST, "--layer", CHEAP, "-q"]
    running = [subprocess.Popen(command(["extract", labelled, tmp_path / f"s{k}.h5", *options, "--shard", f"{k}/2"]),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in (1, 2)]
    for process in running:
        _, err = process.communicate(timeout=240)
        assert process.returncode == 0, err
    assert run_main(["extract", labelled, tmp_path / "whole.h5", *options])[0] == 0
    code, _, err = run_main(["merge", tmp_path / "s1.h5", tmp_path / "s2.h5", tmp_path / "merged.h5"])
    assert code == 0, err
    assert_same_output(read_output(tmp_path / "merged.h5"), read_output(tmp_path / "whole.h5"), atol=1e-5)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["merged.h5", "s1.h5", "s2.h5", "whole.h5"]

    # The same command again (a pipeline run twice) has nothing to do; after a shard is made anew, it is refused.
    merge = ["merge", tmp_path / "s1.h5", tmp_path / "s2.h5", tmp_path / "merged.h5"]
    before = (tmp_path / "merged.h5").read_bytes()
    code, _, err = run_main(merge)
    assert code == 0 and f"{tmp_path / 'merged.h5'} already holds the merge of these shards: 5 descriptors from 2 shards" in err
    assert "nothing to do" in err and (tmp_path / "merged.h5").read_bytes() == before
    with h5py.File(tmp_path / "s2.h5", "r+") as f:
        f.attrs["created"] = "2031-01-01T00:00:00+00:00"
    code, _, err = run_main(merge)
    assert code == 2 and error_line(err).endswith("merged.h5 already exists; pass --overwrite to replace it")
    assert (tmp_path / "merged.h5").read_bytes() == before
