"""ExtractionJob: the HDF5 schema others read with plain h5py, resuming after a crash, the lock.

Everything runs in this process on the session's random VGG16 at one scale without flips; real
processes (kill -9) are in test_cli.py.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import warnings
from datetime import datetime
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torchvision

import vggfeat.job
import vggfeat.files
import vggfeat.parts
from runhelpers import assert_same_output, flaky_storage, read_output, write_labelled_folder, write_plain_folder
from imagefiles import BAD_FILES, write_bad_files, write_rgb
from vggfeat import ExtractionJob, Extractor, ImageSet, VggfeatError, __version__, find_images
from vggfeat.reading import ImageReader
from vggfeat.output import OutputFile, recover_rows
from vggfeat.parts import lock_folder, write_part
from vggfeat.store import FORMAT_VERSION, work_folder

PART = 2  # images per part in the resume tests: 5 usable images + 1 corrupt give 3 parts
CHEAP = "conv1_1"  # resume tests need exact bookkeeping, not deep features: the first layer is ~50x cheaper


@pytest.fixture
def extractor(random_vgg16):
    """The cheap extractor of the resume and refusal tests."""
    return Extractor(random_vgg16, scales=[224], flip=False, device="cpu", layer=CHEAP)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("labelled")
    return root, write_labelled_folder(root)


@pytest.fixture(scope="module")
def fc7_file(labelled, random_vgg16, tmp_path_factory):
    """An uninterrupted fc7 run over the labelled folder (the default layer: 4096-d)."""
    root, _ = labelled
    output = tmp_path_factory.mktemp("fc7") / "fc7.h5"
    job = ExtractionJob(Extractor(random_vgg16, scales=[224], flip=False, device="cpu"), find_images(root), output)
    result = job.run()
    assert (result.rows, result.failed, result.computed) == (5, 1, 6)
    return output


@pytest.fixture(scope="module")
def reference(labelled, random_vgg16, tmp_path_factory):
    """An uninterrupted run over the labelled folder with the cheap extractor, in parts of PART images."""
    root, _ = labelled
    output = tmp_path_factory.mktemp("reference") / "reference.h5"
    extractor = Extractor(random_vgg16, scales=[224], flip=False, device="cpu", layer=CHEAP)
    result = ExtractionJob(extractor, find_images(root), output, part_images=PART).run()
    assert (result.rows, result.failed, result.computed) == (5, 1, 6)
    return output, read_output(output)


def count_decodes(monkeypatch) -> list[str]:
    """Record the name of every file decoded from now on."""
    decoded, real = [], ImageReader._decode_group

    def decode(reader, paths, *args, **kwargs):
        decoded.extend(path.name for path in paths)
        return real(reader, paths, *args, **kwargs)

    monkeypatch.setattr(ImageReader, "_decode_group", decode)
    return decoded


def crash_on_part(monkeypatch, number: int, leave_tmp: bool = False) -> None:
    """Make the ``number``-th part write (1-based) die; with ``leave_tmp`` like a killed writer would,
    leaving a half-written ``part-….h5.tmp`` behind."""
    real, calls = vggfeat.job.write_part, []

    def write_part(folder, start, end, *args):
        calls.append((start, end))
        if len(calls) == number:
            if leave_tmp:
                (folder / f"part-{start:012d}-{end:012d}.h5.tmp").write_bytes(b"\x89HDF\r\n half a part")
            raise RuntimeError("simulated crash while writing a part")
        return real(folder, start, end, *args)

    monkeypatch.setattr(vggfeat.job, "write_part", write_part)


# --------------------------------------------------------------------------- file schema


def test_file_schema(fc7_file, labelled, random_vgg16):
    path = fc7_file
    _, expected = labelled
    dim = 4096
    with h5py.File(path, "r") as f:
        features = f["features"]
        assert features.dtype == np.float32 and features.shape == (5, dim)
        # Chunked by whole rows; sized for the 6 images found, before the one that fails was cut.
        assert features.chunks is not None and features.chunks[1] == dim and 1 <= features.chunks[0] <= 6
        assert np.isfinite(features[:]).all() and (features[:] >= 0).all()  # fc7 is after a ReLU
        assert len({row.tobytes() for row in features[:]}) == 5, "every image must have its own descriptor"

        assert f["paths"].dtype == h5py.string_dtype("utf-8")
        assert list(f["paths"].asstr()[:]) == [row[0] for row in expected["rows"]]
        assert list(f["classes"].asstr()[:]) == expected["classes"] == ["cats", "dogs"]
        assert f["classes"].dtype == h5py.string_dtype("utf-8")
        assert f["labels"].dtype == np.int32
        assert f["labels"][:].tolist() == [0, 0, 1, 1, -1]
        assert f["sizes"].dtype == np.int32 and f["sizes"].shape == (5, 2)
        assert [tuple(size) for size in f["sizes"][:].tolist()] == [row[2] for row in expected["rows"]]
        assert tuple(f["sizes"][3]) == (256, 224)  # EXIF orientation 6: the stored 224x256 turned upright

        assert list(f["failed/paths"].asstr()[:]) == [path for path, _ in expected["failed"]] == ["dogs/broken.jpg"]
        assert "not an image" in f["failed/errors"].asstr()[0]
        assert f["failed/labels"].dtype == np.int32 and f["failed/labels"][:].tolist() == [1]  # dogs

        a = f.attrs
        assert a["format_version"] == FORMAT_VERSION
        assert a["vggfeat_version"] == __version__
        assert a["torch_version"] == str(torch.__version__)
        assert a["torchvision_version"] == torchvision.__version__
        assert a["model"] == "vgg16" and a["weights"] == "random"
        assert a["weights_sha256"] == random_vgg16.weights.sha256 and len(a["weights_sha256"]) == 64
        assert a["layer"] == "fc7" and a["pooling"] == "avg" and a["aggregate"] == "mean"
        assert list(a["scales"]) == [224]
        assert not a["flip"] and a["precision"] == "fp32" and a["dtype"] == "float32"
        assert a["complete"] == True  # noqa: E712 - an HDF5 attribute, numpy bool
        assert a["random_weights"] == True  # noqa: E712
        assert datetime.fromisoformat(a["created"]).tzinfo is not None
        preprocessing = json.loads(a["preprocessing"])
        assert preprocessing["orientation"] == "EXIF orientation applied"
        config = json.loads(a["config"])
        extractor = Extractor(random_vgg16, scales=[224], flip=False, device="cpu")
        assert config == {**json.loads(json.dumps(extractor.config())), "dtype": "float32"}


def test_features_are_what_the_api_returns(fc7_file, labelled, random_vgg16):
    root, expected = labelled
    data = read_output(fc7_file)
    # Two of the five rows (fc7 costs ~0.3 s an image here), one of them the EXIF-rotated image.
    rows = [0, 3]
    api = Extractor(random_vgg16, scales=[224], flip=False, device="cpu").extract([root / expected["rows"][i][0] for i in rows])
    assert api.dtype == np.float32 and api.shape == (2, 4096)
    np.testing.assert_allclose(data["features"][rows], api, rtol=0, atol=1e-6)
    assert np.abs(api[0] - api[1]).max() > 1e-3  # different images, different descriptors


def test_float16_output(tmp_path, labelled, reference, extractor):
    root, _ = labelled
    output = tmp_path / "half.h5"
    ExtractionJob(extractor, find_images(root), output, dtype="float16", part_images=PART).run()
    with h5py.File(output, "r") as f:
        assert f["features"].dtype == np.float16 and f["features"].shape == (5, 64)
        assert f["features"].chunks is not None and f["features"].chunks[1] == 64
        assert f.attrs["dtype"] == "float16" and json.loads(f.attrs["config"])["dtype"] == "float16"
        half = f["features"][:].astype(np.float32)
    full = reference[1]["features"]
    np.testing.assert_allclose(half, full, rtol=2e-3, atol=1e-4)
    assert not np.array_equal(half, full)  # really rounded to float16


def test_an_image_whose_descriptor_float16_cannot_hold_fails_alone(tmp_path, labelled, reference, random_vgg16):
    """Stored as float16 its values would be inf, which train-svm and index then refuse (the run over)."""
    root, _ = labelled
    loud = copy.deepcopy(random_vgg16)
    with torch.no_grad():
        loud.features[0].weight *= 1e6  # descriptors of 2.7e5 to 5e5 (the reference: 0.5 at most)
    extractor = Extractor(loud, scales=[224], flip=False, device="cpu", layer=CHEAP)
    result = ExtractionJob(extractor, find_images(root), tmp_path / "half.h5", dtype="float16", part_images=PART).run()
    written = read_output(tmp_path / "half.h5")
    assert result.rows == 0 and written["failed_paths"] == sorted(reference[1]["paths"] + reference[1]["failed_paths"])
    assert written["failed_errors"].count("its descriptor holds values beyond float16's range (±65,504): store float32 "
                                          "descriptors (--dtype float32)") == 5
    full = ExtractionJob(extractor, find_images(root), tmp_path / "full.h5", part_images=PART).run()
    assert full.rows == 5 and np.isfinite(read_output(tmp_path / "full.h5")["features"]).all()


def test_each_descriptor_is_on_disk_once_while_a_run_goes_on(tmp_path, labelled, extractor, monkeypatch):
    """The parts record where their rows are in the output being written, and hold no copy of
    them: the disk a run takes is its output's, not twice that."""
    root, _ = labelled
    output = tmp_path / "half.h5"
    die_before_the_output_is_complete(monkeypatch)
    with pytest.raises(RuntimeError, match="as the output is completed"):
        ExtractionJob(extractor, find_images(root), output, dtype="float16", part_images=PART).run()
    work = output.with_name("half.h5.parts")
    parts = sorted(work.glob("part-*.h5"))
    assert len(parts) == 3
    rows = 0
    for part in parts:
        with h5py.File(part, "r") as f:
            assert "features" not in f and f.attrs["first_row"] == rows
            rows += f["indices"].shape[0]
    assert rows == 5  # the sixth image failed
    with h5py.File(work / "rows.h5", "r") as f:
        assert f["features"].dtype == np.float16 and f["features"].shape == (6, 64)  # a row for every image
        assert np.isfinite(f["features"][:5]).all() and np.abs(f["features"][:5]).sum(axis=1).min() > 0


def test_folder_of_only_bad_files_gives_an_empty_file(tmp_path, extractor):
    write_bad_files(tmp_path / "bad")
    output = tmp_path / "out.h5"
    result = ExtractionJob(extractor, find_images(tmp_path / "bad"), output).run()
    assert (result.rows, result.failed) == (0, len(BAD_FILES))
    data = read_output(output)
    assert data["features"].shape == (0, 64) and data["attrs"]["complete"]
    assert sorted(data["failed_paths"]) == data["failed_paths"] and len(data["failed_paths"]) == len(BAD_FILES)


# --------------------------------------------------------------------------- resume


def test_a_run_writes_its_rows_as_it_goes_and_none_again(tmp_path, labelled, reference, extractor, monkeypatch):
    """Each part's rows go into the output as it is committed, and only there: after the last
    image no descriptor is copied, where copying every part into the output took 7-9% of a fast
    GPU run."""
    root, _ = labelled
    events, append, finish = [], OutputFile.append, OutputFile.finish

    def appended(output, start, end, features):
        events.append(("rows", len(features)))
        return append(output, start, end, features)

    def finished(output, parts, attrs, read_after):
        events.append(("finish", None))
        return finish(output, parts, attrs, read_after)

    monkeypatch.setattr(OutputFile, "append", appended)
    monkeypatch.setattr(OutputFile, "finish", finished)
    ExtractionJob(extractor, find_images(root), tmp_path / "out.h5", part_images=PART).run()
    assert [event for event, _ in events] == ["rows", "rows", "rows", "finish"]
    assert sum(rows for event, rows in events if event == "rows") == 5  # each row once
    assert_same_output(read_output(tmp_path / "out.h5"), reference[1])


def test_resume_after_a_crash_recomputes_only_missing_images(tmp_path, labelled, reference, extractor, monkeypatch):
    root, _ = labelled
    images = find_images(root)  # 6 files: parts [0,2) [2,4) [4,6)
    output = tmp_path / "out.h5"
    crash_on_part(monkeypatch, 3)
    first = ExtractionJob(extractor, images, output, part_images=PART)
    with pytest.raises(RuntimeError, match="simulated crash"):
        first.run()
    assert not output.exists()
    work = output.with_name("out.h5.parts")
    assert sorted(p.name for p in work.glob("part-*.h5")) == [
        "part-000000000000-000000000002.h5",
        "part-000000000002-000000000004.h5",
    ]
    monkeypatch.undo()

    # `first` is still alive: its failed run must have let go of the lock.
    decoded = count_decodes(monkeypatch)
    second = ExtractionJob(extractor, images, output, part_images=PART)
    assert (second.done, second.total) == (4, 6)
    result = second.run()
    assert sorted(decoded) == ["top.png", "turned.jpg"]  # images 4 and 5, the ones no part holds
    assert (result.rows, result.failed, result.computed) == (5, 1, 2)
    assert_same_output(read_output(output), reference[1])
    assert not work.exists()
    # Every row's file was read after the first run began: the resumed run keeps that time.
    assert second.manifest["started"] == first.manifest["started"]
    assert set(read_output(output)["read_after"]) == {first.manifest["started"]}


def test_a_run_stops_when_the_storage_goes_away_recording_none_of_its_images_as_failed(tmp_path, extractor, monkeypatch):
    files = write_plain_folder(tmp_path / "images", 12)
    images = find_images(tmp_path / "images")
    ExtractionJob(extractor, images, tmp_path / "reference.h5", part_images=PART).run()
    output, work = tmp_path / "out.h5", tmp_path / "out.h5.parts"
    monkeypatch.setattr(vggfeat.job, "STORAGE_FAILURES_TO_STOP", 4)
    # From the seventh image on, every read fails, however often tried: a file system gone away.
    flaky_storage(monkeypatch, {path.name: 10**6 for path in files[6:]})
    with pytest.raises(OSError, match=r"the last 4 images in a row could not be read \(storage error "
                                      r"\(Input/output error\), 3 tries\): their storage seems to be unavailable"):
        ExtractionJob(extractor, images, output, part_images=PART).run()
    # The parts hold the images before it, and no image that the storage failed to give.
    assert sorted(path.name for path in work.glob("part-*.h5")) == [
        f"part-{start:012d}-{start + 2:012d}.h5" for start in (0, 2, 4)]
    monkeypatch.undo()  # the storage is back: the same job describes the rest
    job = ExtractionJob(extractor, images, output, part_images=PART)
    assert job.done == 6 and job.run().failed == 0
    assert_same_output(read_output(output), read_output(tmp_path / "reference.h5"))


def test_stale_tmp_part_of_a_killed_writer_is_ignored(tmp_path, labelled, reference, extractor, monkeypatch):
    root, _ = labelled
    images = find_images(root)
    output = tmp_path / "out.h5"
    work = output.with_name("out.h5.parts")
    crash_on_part(monkeypatch, 2, leave_tmp=True)
    with pytest.raises(RuntimeError):
        ExtractionJob(extractor, images, output, part_images=PART).run()
    monkeypatch.undo()
    stale = work / "part-000000000002-000000000004.h5.tmp"
    assert stale.exists() and [p.name for p in work.glob("part-*.h5")] == ["part-000000000000-000000000002.h5"]

    decoded = count_decodes(monkeypatch)
    job = ExtractionJob(extractor, images, output, part_images=PART)
    assert job.done == 2 and not stale.exists()
    job.run()
    assert len(decoded) == 4
    assert_same_output(read_output(output), reference[1])


def die_before_the_output_is_complete(monkeypatch) -> None:
    """Make the run die after its last part, as its output file is being completed."""
    def finish(output, parts, attrs, read_after):
        output._file.attrs["half"] = "written"
        output._file["paths"] = ["half written"]
        raise RuntimeError("simulated kill as the output is completed")

    monkeypatch.setattr(OutputFile, "finish", finish)


def test_kill_before_the_output_is_complete_then_rerun_writes_it(tmp_path, labelled, reference, extractor, monkeypatch):
    root, _ = labelled
    images = find_images(root)
    output = tmp_path / "out.h5"
    work = output.with_name("out.h5.parts")
    die_before_the_output_is_complete(monkeypatch)
    with pytest.raises(RuntimeError, match="as the output is completed"):
        ExtractionJob(extractor, images, output, part_images=PART).run()
    monkeypatch.undo()
    assert not output.exists() and (work / "rows.h5").exists()
    assert len(list(work.glob("part-*.h5"))) == 3

    decoded = count_decodes(monkeypatch)
    job = ExtractionJob(extractor, images, output, part_images=PART)
    assert job.done == job.total == 6
    result = job.run()
    assert decoded == [] and result.computed == 0 and (result.rows, result.failed) == (5, 1)
    assert_same_output(read_output(output), reference[1])
    assert not work.exists()


@pytest.mark.parametrize("lost", ["removed by hand", "damaged"])
def test_a_part_removed_by_hand_or_damaged_is_described_again_with_those_after_it(tmp_path, labelled, reference, extractor,
                                                                                  monkeypatch, lost):
    """A damaged part (a flipped bit on the disk) stopped the run that resumed, every time, in h5py's
    OSError naming no file."""
    root, _ = labelled
    images = find_images(root)  # 6 files: parts [0,2) [2,4) [4,6); [4,6) holds the one that fails
    output = tmp_path / "out.h5"
    die_before_the_output_is_complete(monkeypatch)
    with pytest.raises(RuntimeError, match="as the output is completed"):
        ExtractionJob(extractor, images, output, part_images=PART).run()
    monkeypatch.undo()
    part = tmp_path / "out.h5.parts" / "part-000000000002-000000000004.h5"
    if lost == "removed by hand":
        part.unlink()
    else:
        part.write_bytes(bytes(512) + part.read_bytes()[512:])  # its first sector zeroed

    # The rows of the part after the gap followed those lost: it is described again too.
    decoded = count_decodes(monkeypatch)
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        job = ExtractionJob(extractor, images, output, part_images=PART)
    assert [str(w.message).split(" (")[0] for w in warned] == ([f"{part} is damaged"] if lost == "damaged" else [])
    assert job.done == 2
    result = job.run()
    assert len(decoded) == 4 and (result.rows, result.failed, result.computed) == (5, 1, 4)
    assert_same_output(read_output(output), reference[1])
    assert "half" not in read_output(output)["attrs"]  # nothing of the killed completion is left


@pytest.mark.parametrize("rows_file", ["broken", "broken, a part's rows at an unknown place", "removed"])
def test_rows_broken_as_the_output_is_completed_are_read_back_and_lost_ones_described_again(
        tmp_path, labelled, reference, extractor, monkeypatch, rows_file):
    """A kill as the run completes its output may leave the file's metadata broken, never the rows
    written before: they are read back from its bytes. Rows whose file is gone are described again."""
    root, _ = labelled
    images = find_images(root)
    output, rows = tmp_path / "out.h5", tmp_path / "out.h5.parts" / "rows.h5"
    die_before_the_output_is_complete(monkeypatch)
    with pytest.raises(RuntimeError, match="as the output is completed"):
        ExtractionJob(extractor, images, output, part_images=PART).run()
    monkeypatch.undo()
    if rows_file.startswith("broken"):
        with open(rows, "r+b") as f:
            f.write(bytes(2048))  # the superblock and the root group: HDF5 cannot open it
        with pytest.raises(OSError):
            h5py.File(rows, "r")
    else:
        rows.unlink()
    if rows_file.endswith("unknown place"):  # (an HDF5 that could not say): no row is read back
        with h5py.File(tmp_path / "out.h5.parts" / "part-000000000002-000000000004.h5", "r+") as f:
            del f["chunk_offsets"]

    decoded = count_decodes(monkeypatch)
    job = ExtractionJob(extractor, images, output, part_images=PART)
    result = job.run()
    assert len(decoded) == (0 if rows_file == "broken" else 6) and result.computed == len(decoded)
    assert_same_output(read_output(output), reference[1])


def test_rows_are_read_back_chunk_by_chunk_where_each_part_says_they_lie(tmp_path):
    """HDF5 puts its chunk index between the chunks it allocates (every 60 or so): the rows of a
    broken file are read back a chunk at a time, from where each part recorded its chunks."""
    n, dim = 20_000, 4096
    images = ImageSet(tmp_path, tuple(f"{i:05d}.jpg" for i in range(n)), np.full(n, -1), ())
    rows_file, rng = tmp_path / "rows.h5", np.random.default_rng(0)
    output, parts = OutputFile(rows_file, images, dim, "float16"), []
    for start, end in ((0, 1000), (1000, 9000), (9000, 9001)):  # 128 rows a chunk: the second spans 63
        first = output.append(start, end, rng.standard_normal((end - start, dim)).astype(np.float16))
        parts.append(write_part(tmp_path, start, end, None, np.arange(start, end), np.zeros((end - start, 2)), [], first,
                                output.chunks_of(first, end - start)))
    written = output._features[:9001]
    output.close()
    with h5py.File(parts[1].path, "r") as f:
        assert f.attrs["chunk_rows"] == 128 and np.diff(f["chunk_offsets"][:]).max() > 128 * dim * 2, "no gap to test"
    with open(rows_file, "r+b") as f:
        f.write(bytes(2048))
    assert recover_rows(rows_file, [part.path for part in parts], images, dim, "float16")
    with h5py.File(rows_file, "r") as f:
        np.testing.assert_array_equal(f["features"][:9001], written)


def test_parts_holding_their_descriptors_fill_the_output_in_image_order(tmp_path, labelled, reference, extractor, monkeypatch):
    """An interrupted run of an earlier vggfeat kept every part's descriptors in the part, and no
    output: a resumed run takes them in, and fills a gap between them, in image order."""
    root, _ = labelled
    images = find_images(root)
    output, work = tmp_path / "out.h5", tmp_path / "out.h5.parts"
    die_before_the_output_is_complete(monkeypatch)
    with pytest.raises(RuntimeError, match="as the output is completed"):
        ExtractionJob(extractor, images, output, part_images=PART).run()
    monkeypatch.undo()
    expected = reference[1]
    for part in work.glob("part-*.h5"):
        with h5py.File(part, "r") as f:
            indices, sizes = f["indices"][:], f["sizes"][:]
            failures = list(zip(f["failed_indices"][:].tolist(), f["failed_errors"].asstr()[:]))
        rows = [expected["paths"].index(images.paths[i]) for i in indices]
        part.unlink()
        write_part(work, *map(int, part.name[5:-3].split("-")), expected["features"][rows], indices, sizes, failures)
    (work / "rows.h5").unlink()
    (work / "part-000000000002-000000000004.h5").unlink()

    decoded = count_decodes(monkeypatch)
    result = ExtractionJob(extractor, images, output, part_images=PART).run()
    assert len(decoded) == 2 and (result.rows, result.failed, result.computed) == (5, 1, 2)
    assert_same_output(read_output(output), expected)


def test_an_existing_output_is_replaced_only_by_a_complete_one(tmp_path, extractor, monkeypatch):
    files = write_plain_folder(tmp_path / "images", 2)
    images = find_images(tmp_path / "images")
    output = tmp_path / "out.h5"
    output.write_bytes(b"an older file, not to be lost")
    with pytest.raises(VggfeatError, match="already exists"):
        ExtractionJob(extractor, images, output)
    crash_on_part(monkeypatch, 2)
    with pytest.raises(RuntimeError):
        ExtractionJob(extractor, images, output, overwrite=True, part_images=1).run()
    monkeypatch.undo()
    assert output.read_bytes() == b"an older file, not to be lost"
    result = ExtractionJob(extractor, images, output, overwrite=True, part_images=1).run()
    assert result.computed == 1  # the part written before the crash was kept
    assert read_output(output)["paths"] == [p.name for p in files]


# --------------------------------------------------------------------------- refusals and the lock


def test_the_same_job_on_its_finished_output_is_already_done(tmp_path, labelled, reference, extractor, monkeypatch):
    """A script run twice, or a run killed once its output was whole and its work removed: the same
    job has nothing to do, and says so; any other job is refused as before."""
    root, _ = labelled
    output = tmp_path / "out.h5"
    shutil.copy(reference[0], output)
    before = output.read_bytes()
    decoded = count_decodes(monkeypatch)
    job = ExtractionJob(extractor, find_images(root), output, part_images=PART)
    assert job.already_done and job.done == job.total == 6 and job.disk_needed() == 0
    result = job.run()
    assert (result.rows, result.failed, result.computed, result.already_done) == (5, 1, 0, True)
    assert decoded == [] and output.read_bytes() == before and not work_folder(output).exists()

    # The same names in another folder, another option, another image: another job.
    shutil.copytree(root, tmp_path / "copy")
    (tmp_path / "more").mkdir()
    shutil.copytree(root, tmp_path / "more" / "images")
    write_rgb(tmp_path / "more" / "images" / "cats" / "new.png", 224, 224)
    other_layer = Extractor(extractor.network, scales=[224], flip=False, device="cpu", layer="conv1_2")
    for other, images, dtype, refusal in [
        (extractor, find_images(tmp_path / "copy"), "float32", "already exists; pass --overwrite"),
        (other_layer, find_images(root), "float32", r"made with other options \(layer: conv1_1 then, conv1_2 now\)"),
        (extractor, find_images(root), "float16", r"made with other options \(dtype: float32 then, float16 now\)"),
        (extractor, find_images(tmp_path / "more" / "images"), "float32", "already exists; pass --overwrite"),
    ]:
        with pytest.raises(VggfeatError, match=refusal):
            ExtractionJob(other, images, output, dtype=dtype)
    assert output.read_bytes() == before and decoded == []
    result = ExtractionJob(extractor, find_images(root), output, overwrite=True, part_images=PART).run()
    assert (result.computed, result.already_done) == (6, False)
    assert_same_output(read_output(output), reference[1])


def test_a_second_job_on_the_same_output_is_refused(tmp_path, extractor):
    (tmp_path / "images").mkdir()
    write_rgb(tmp_path / "images" / "one.png", 224, 224)
    images = find_images(tmp_path / "images")
    output = tmp_path / "out.h5"
    first = ExtractionJob(extractor, images, output)
    with pytest.raises(VggfeatError, match="another vggfeat run is writing"):
        ExtractionJob(extractor, images, output)
    assert (output.with_name("out.h5.parts") / "manifest.json").is_file()  # the first job's folder is intact
    result = first.run()
    assert result.rows == 1 and output.exists()


def test_a_job_made_and_not_run_lets_go_of_its_output_when_closed_or_dropped(tmp_path, extractor):
    """A notebook's cell run again made a second job while the first, not run, held the lock."""
    (tmp_path / "images").mkdir()
    write_rgb(tmp_path / "images" / "one.png", 224, 224)
    images = find_images(tmp_path / "images")
    output = tmp_path / "out.h5"
    with ExtractionJob(extractor, images, output):
        pass
    job = ExtractionJob(extractor, images, output)
    with pytest.raises(VggfeatError, match="a job of this process on it, made and not run, holds it; run that job, or "
                                           r"close\(\) it first"):
        job = ExtractionJob(extractor, images, output)  # (made before the name lets go of the first)
    job.close()
    job = ExtractionJob(extractor, images, output)
    del job  # dropped: collected, it lets go
    assert ExtractionJob(extractor, images, output).run().rows == 1


def test_the_lock_of_a_folder_removed_as_it_was_taken_is_refused(tmp_path, monkeypatch):
    """A run that finishes removes its folder, lock and all, then lets go of the lock: a run that
    opened that lock before the removal would hold a lock no other run can find."""
    folder = tmp_path / "out.h5.parts"
    folder.mkdir()
    take = vggfeat.parts._lock_exclusively

    def removed_before_it_was_taken(file):
        shutil.rmtree(folder)
        take(file)

    monkeypatch.setattr(vggfeat.parts, "_lock_exclusively", removed_before_it_was_taken)
    with pytest.raises(VggfeatError, match="another vggfeat run finished writing .*out.h5 as this one began: run this "
                                           "command again"):
        lock_folder(folder, tmp_path / "out.h5")
    with pytest.raises(VggfeatError, match="another vggfeat run finished writing"):  # removed before it was opened
        lock_folder(folder, tmp_path / "out.h5")


def test_a_lock_a_killed_update_left_is_no_run_of_another_folder(tmp_path, extractor):
    """A kill in an update leaves OUTPUT.parts/ with its lock alone: the output, whole, was taken
    for this job's own finished work over another folder of the same names ("done", its rows the
    first folder's), and said to have described every image."""
    write_plain_folder(tmp_path / "images", 2)
    shutil.copytree(tmp_path / "images", tmp_path / "copy")
    output = tmp_path / "out.h5"
    ExtractionJob(extractor, find_images(tmp_path / "images"), output).run()
    work_folder(output).mkdir()
    (work_folder(output) / "lock").touch()
    with pytest.raises(VggfeatError, match="already exists"):
        ExtractionJob(extractor, find_images(tmp_path / "copy"), output)
    job = ExtractionJob(extractor, find_images(tmp_path / "images"), output)
    assert job.done == job.total == 2 and job.run().computed == 0 and not work_folder(output).exists()


def test_work_discarded_by_overwrite_loses_its_manifest_last(tmp_path, monkeypatch):
    """shutil.rmtree removes entries in the folder's order, a manifest before some parts: a kill
    then left parts without a manifest, a folder every run refused as not vggfeat's."""
    work = tmp_path / "out.h5.parts"
    work.mkdir()
    for name in ["manifest.json", "rows.h5", "lock", *(f"part-{k:012d}-{k + 1:012d}.h5" for k in range(9))]:
        (work / name).write_text("x")
    (work / "block.parts").mkdir()  # a block's work folder, within a shards folder
    (work / "block.parts" / "manifest.json").write_text("x")
    (work / "block.parts" / "part-000000000000-000000000001.h5").write_text("x")
    removed, unlink = [], os.unlink
    monkeypatch.setattr(os, "unlink", lambda path, *args, **kwargs: removed.append(Path(path).name) or unlink(path, *args, **kwargs))
    vggfeat.parts.discard_work(work, tmp_path / "out.h5")
    assert not work.exists()
    assert removed.index("manifest.json") > removed.index("part-000000000000-000000000001.h5")  # the block's first
    kept_to_the_end = [name for name in removed if name != "lock"]  # the lock goes with the folder, held to the end
    assert kept_to_the_end[-1] == "manifest.json" and removed.count("manifest.json") == 2


def test_an_interrupted_run_resumes_through_a_link_to_its_folder(tmp_path, extractor, monkeypatch):
    write_plain_folder(tmp_path / "images", 3)
    (tmp_path / "link").symlink_to(tmp_path / "images")
    crash_on_part(monkeypatch, 2)
    with pytest.raises(RuntimeError):
        ExtractionJob(extractor, find_images(tmp_path / "link"), tmp_path / "out.h5", part_images=1).run()
    monkeypatch.undo()
    job = ExtractionJob(extractor, find_images(tmp_path / "images"), tmp_path / "out.h5", part_images=1)
    assert job.done == 1 and job.run().computed == 2


def test_resume_with_another_configuration_is_refused(tmp_path, random_vgg16, extractor, monkeypatch):
    write_plain_folder(tmp_path / "images", 3)
    images = find_images(tmp_path / "images")
    output = tmp_path / "out.h5"
    work = output.with_name("out.h5.parts")
    cheap = extractor  # conv1_1
    crash_on_part(monkeypatch, 2)
    with pytest.raises(RuntimeError):
        ExtractionJob(cheap, images, output, part_images=1).run()
    monkeypatch.undo()
    kept = {p.name: p.read_bytes() for p in work.iterdir() if p.name != "lock"}

    other = Extractor(random_vgg16, scales=[224], flip=False, device="cpu", layer="conv1_2")
    with pytest.raises(VggfeatError, match=r"layer: conv1_1 then, conv1_2 now"):
        ExtractionJob(other, images, output, part_images=1)
    with pytest.raises(VggfeatError, match=r"dtype: float32 then, float16 now"):
        ExtractionJob(cheap, images, output, part_images=1, dtype="float16")
    shutil.copytree(tmp_path / "images", tmp_path / "copy")  # the same names, other files: other images
    with pytest.raises(VggfeatError, match=re.escape(f"image folder: {tmp_path / 'images'} then, {tmp_path / 'copy'} now")):
        ExtractionJob(cheap, find_images(tmp_path / "copy"), output, part_images=1)
    write_rgb(tmp_path / "images" / "new.png", 224, 224)
    with pytest.raises(VggfeatError, match=r"image set: 3 files then, 4 now \(or other names or labels\)\); it resumes "
                                           r"over the images it began with only: restore them, or pass --overwrite"):
        ExtractionJob(cheap, find_images(tmp_path / "images"), output, part_images=1)  # not "the same options" again
    assert {p.name: p.read_bytes() for p in work.iterdir() if p.name != "lock"} == kept
    manifest = json.loads((work / "manifest.json").read_text())
    del manifest["root"]  # as a run before it was recorded wrote it: resumed all the same
    (work / "manifest.json").write_text(json.dumps(manifest))
    assert ExtractionJob(cheap, images, output, part_images=1).run().computed == 2

    job = ExtractionJob(other, find_images(tmp_path / "images"), output, part_images=1, overwrite=True)
    assert job.done == 0 and list(work.glob("part-*.h5")) == []
    result = job.run()
    assert result.computed == 4 and read_output(output)["attrs"]["layer"] == "conv1_2"


def test_unknown_dtype_and_foreign_parts_folder_are_refused(tmp_path, extractor):
    (tmp_path / "images").mkdir()
    write_rgb(tmp_path / "images" / "one.png", 224, 224)
    images = find_images(tmp_path / "images")
    with pytest.raises(VggfeatError, match="unknown dtype"):
        ExtractionJob(extractor, images, tmp_path / "out.h5", dtype="float64")
    with pytest.raises(VggfeatError, match="part_images must be at least 1, got 0"):  # (--part-size's own range)
        ExtractionJob(extractor, images, tmp_path / "out.h5", part_images=0)
    foreign = tmp_path / "out.h5.parts"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("not vggfeat's")
    with pytest.raises(VggfeatError, match="not a vggfeat work folder"):
        ExtractionJob(extractor, images, tmp_path / "out.h5", overwrite=True)
    assert [p.name for p in foreign.iterdir()] == ["mine.txt"]
    assert (foreign / "mine.txt").read_text() == "not vggfeat's"
    # Another program's manifest.json does not make the folder vggfeat's (--overwrite removed mine.txt).
    (foreign / "manifest.json").write_text('{"a": 1}')
    with pytest.raises(VggfeatError, match=r"not a vggfeat work folder \(its manifest.json is not vggfeat's\)"):
        ExtractionJob(extractor, images, tmp_path / "out.h5", overwrite=True)
    assert sorted(p.name for p in foreign.iterdir()) == ["manifest.json", "mine.txt"]


def test_links_where_a_run_keeps_its_work_are_refused_and_nothing_is_written_through_them(tmp_path, extractor):
    """A link named lock in OUTPUT.parts: opened to lock, its file was truncated. OUTPUT.parts a
    link to a folder: the run described every image, then failed to remove it ('Cannot call rmtree
    on a symbolic link'), and so did every run after."""
    (tmp_path / "images").mkdir()
    write_rgb(tmp_path / "images" / "one.png", 224, 224)
    images, output = find_images(tmp_path / "images"), tmp_path / "out.h5"
    precious = tmp_path / "precious.txt"
    precious.write_text("precious")
    (tmp_path / "out.h5.parts").mkdir()
    (tmp_path / "out.h5.parts" / "lock").symlink_to(precious)
    with pytest.raises(VggfeatError, match=r"out.h5.parts/lock is a link, where vggfeat locks a run on .*: remove it"):
        ExtractionJob(extractor, images, output)
    assert precious.read_text() == "precious"
    (tmp_path / "out.h5.parts" / "lock").unlink()
    (tmp_path / "out.h5.parts").rmdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out.h5.parts").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(VggfeatError, match=r"out.h5.parts is a link: vggfeat keeps a run's work for .* in a folder of "
                                           r"its own there; remove the link"):
        ExtractionJob(extractor, images, output)
    assert list((tmp_path / "elsewhere").iterdir()) == [] and not output.exists()


def test_a_run_killed_as_it_wrote_its_manifest_resumes(tmp_path, extractor, monkeypatch):
    """Killed between the manifest's temporary file and its rename (SIGTERM to a device's process
    of a multi-device run, as another device's failure stops it): the folder is still the run's."""
    (tmp_path / "images").mkdir()
    write_rgb(tmp_path / "images" / "one.png", 224, 224)
    images, output = find_images(tmp_path / "images"), tmp_path / "out.h5"

    def killed(source, destination):
        raise KeyboardInterrupt

    monkeypatch.setattr(vggfeat.files, "replace_durably", killed)
    with pytest.raises(KeyboardInterrupt):
        ExtractionJob(extractor, images, output)
    monkeypatch.undo()
    assert sorted(path.name for path in (tmp_path / "out.h5.parts").iterdir()) == ["lock", "manifest.json.tmp"]
    assert ExtractionJob(extractor, images, output).run().rows == 1


def test_a_run_killed_after_its_output_was_in_place_is_finished_by_the_same_command(
    tmp_path, labelled, reference, extractor, monkeypatch
):
    root, _ = labelled
    images = find_images(root)
    output = tmp_path / "out.h5"
    work = output.with_name("out.h5.parts")

    def killed(job):
        raise KeyboardInterrupt  # after the output's rename, before its work folder is removed

    monkeypatch.setattr(ExtractionJob, "_remove_work", killed)
    with pytest.raises(KeyboardInterrupt):
        ExtractionJob(extractor, images, output, part_images=PART).run()
    monkeypatch.undo()
    assert output.exists() and work.exists()

    other = Extractor(extractor.network, scales=[224], flip=False, device="cpu", layer="conv1_2")
    with pytest.raises(VggfeatError, match="already exists"):  # another job's output is never replaced
        ExtractionJob(other, images, output, part_images=PART)

    decoded = count_decodes(monkeypatch)
    job = ExtractionJob(extractor, images, output, part_images=PART)
    assert job.done == job.total == 6
    job.run()
    assert decoded == [] and not work.exists()
    assert_same_output(read_output(output), reference[1])

    # Killed as _remove_work removed the folder, its manifest gone, its lock not: the same job
    # tidies up (it refused for good, "already exists, made with these options over other images").
    work.mkdir()
    (work / "lock").touch()
    ExtractionJob(extractor, images, output, part_images=PART).run()
    assert decoded == [] and not work.exists()
    assert_same_output(read_output(output), reference[1])
