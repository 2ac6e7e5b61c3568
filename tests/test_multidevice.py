"""``extract --device A,B``: a process per device describes a shard each, and the shards are merged
into OUTPUT; the file equals one run's, a stopped or failed run keeps its work and resumes, and
nothing that is not the run's own is written over. Here the devices are the CPU, twice.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch

from runhelpers import (FAST, assert_same_output, children, crash_on_part, error_line, read_output, run_main,
                        running, started_until_a_part, terminated, write_labelled_folder, write_plain_folder)
from imagefiles import write_rgb
import vggfeat.job
import vggfeat.multidevice
import vggfeat.output
import vggfeat.stack
import vggfeat.update
from vggfeat import ExtractionJob, Extractor, ImageSet, VggfeatError, find_images
from vggfeat.classifier import Classifier
from vggfeat.multidevice import MultiDeviceJob, block_count
from vggfeat.processes import process_context
from vggfeat.parts import work_progress
from vggfeat.store import shards_folder, work_folder

CHEAP = [*FAST, "--layer", "conv1_1"]
TWO_CPUS = ["--device", "cpu,cpu"]  # after FAST's --device cpu: the last one counts



def cheap_extractor(**options) -> Extractor:
    return Extractor("vgg16", weights="random", scales=[224], flip=False, device="cpu", layer="conv1_1", **options)


def test_two_devices_write_the_file_one_run_writes(tmp_path):
    write_labelled_folder(tmp_path / "images")
    assert run_main(["extract", tmp_path / "images", tmp_path / "one.h5", *CHEAP, "-q"])[0] == 0
    code, _, err = run_main(["extract", tmp_path / "images", tmp_path / "two.h5", *CHEAP, *TWO_CPUS])
    assert code == 0, err
    assert "on cpu, cpu (a process each)" in err
    assert "wrote " in err and "5 descriptors (64-d float32), 1 failed; 6 images in" in err and "on cpu, cpu" in err
    two, one = read_output(tmp_path / "two.h5"), read_output(tmp_path / "one.h5")
    assert_same_output(two, one, atol=1e-5)
    assert two["attrs"]["command"].endswith("--device cpu,cpu")  # the same command made every shard
    assert [shard["shard"] for shard in json.loads(two["attrs"]["shards"])] == [1, 2]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["images", "one.h5", "two.h5"]  # no shards left

    # The same command again (a script run twice) has nothing to do, and says so: no process starts.
    before = (tmp_path / "two.h5").read_bytes()
    code, _, err = run_main(["extract", tmp_path / "images", tmp_path / "two.h5", *CHEAP, *TWO_CPUS])
    assert code == 0, err
    assert f"{tmp_path / 'two.h5'} already holds this extraction: 5 descriptors (64-d float32), 1 failed; nothing to do" in err
    assert (tmp_path / "two.h5").read_bytes() == before and "shard" not in err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["images", "one.h5", "two.h5"]


def test_a_classifiers_posteriors_are_written_on_several_devices_as_descriptors_are(tmp_path):
    """Each process builds the extractor's own class: a Classifier's posteriors, not fc8's scores."""
    write_plain_folder(tmp_path / "images", 3)
    classifier = Classifier("vgg16", weights="random", scales=[224], flip=False, device="cpu")
    result = MultiDeviceJob(classifier, ["cpu", "cpu"], find_images(tmp_path / "images"), tmp_path / "p.h5").run()
    assert (result.rows, result.failed) == (3, 0)
    data = read_output(tmp_path / "p.h5")
    expected = classifier.extract([tmp_path / "images" / path for path in data["paths"]])
    np.testing.assert_allclose(data["features"], expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(data["features"].sum(axis=1), 1.0, atol=1e-5)  # probabilities
    assert data["attrs"]["dense"] and not data["attrs"]["multi_crop"] and data["features"].shape[1] == 1000
    code, out, _ = run_main(["info", tmp_path / "p.h5"])
    assert code == 0 and "  posteriors   dense evaluation (softmax of fc8); scales 224; flip off; precision fp32" in out


def test_a_csv_of_predictions_is_written_on_several_devices_as_on_one(tmp_path):
    write_plain_folder(tmp_path / "images", 3)
    args = ["classify", tmp_path / "images", *FAST, "--scales", "224", "--no-flip", "-q"]
    assert run_main([*args, tmp_path / "one.csv"])[0] == 0
    code, _, err = run_main([*args, tmp_path / "two.csv", *TWO_CPUS])
    assert code == 0, err
    one, two = ((tmp_path / name).read_text().splitlines() for name in ("one.csv", "two.csv"))
    assert len(two) == 4 and [row.split(",")[:2] for row in two] == [row.split(",")[:2] for row in one]  # path, class_1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["images", "one.csv", "two.csv"]


def test_networks_fused_on_several_devices_write_the_csv_of_one_device(tmp_path):
    """``classify --model A,B --device cpu,cpu``: each network's processes in turn, one CSV."""
    write_plain_folder(tmp_path / "images", 3)
    args = ["classify", tmp_path / "images", *FAST, "--scales", "224", "--no-flip", "--model", "vgg11,vgg13", "-q"]
    assert run_main([*args, tmp_path / "one.csv"])[0] == 0
    code, _, err = run_main([*args, tmp_path / "two.csv", *TWO_CPUS])
    assert code == 0, err
    one, two = ((tmp_path / name).read_text().splitlines() for name in ("one.csv", "two.csv"))
    assert len(two) == 4 and [row.split(",")[:2] for row in two] == [row.split(",")[:2] for row in one]  # path, class_1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["images", "one.csv", "two.csv"]


def test_each_process_is_sent_its_shard_only(tmp_path, monkeypatch):
    """Not the whole list of images to each device's process (10 million paths are about 1 GiB of
    memory in each), nor a digest of the whole collection to work out again there."""
    write_plain_folder(tmp_path / "images", 7)
    images, sent, threads = find_images(tmp_path / "images"), [], []
    device_process = process_context().Process
    start = device_process.start

    def recording_start(process):
        sent.append(process._args[4][1])  # its first block: (k, images, file)
        threads.append(process._args[-1])
        start(process)

    monkeypatch.setattr(device_process, "start", recording_start)
    MultiDeviceJob(cheap_extractor(), ["cpu", "cpu"], images, tmp_path / "out.h5").run()
    assert [shard.paths for shard in sent] == [images.paths[:3], images.paths[3:]]
    assert threads == [max(1, torch.get_num_threads() // 2)] * 2  # the CPU's cores shared, not each all of them
    assert [shard.shard_of.index for shard in sent] == [1, 2]
    assert {shard.shard_of.collection_sha256 for shard in sent} == {images.digest()}


def test_a_shard_that_dies_stops_the_others_which_keep_their_work(tmp_path):
    """Shard 2's process is killed (kill -9, the out-of-memory killer); shard 1 stops, keeping its
    finished parts, and the same job run again describes only what they do not hold."""
    write_plain_folder(tmp_path / "images", 12)
    images, output = find_images(tmp_path / "images"), tmp_path / "out.h5"
    slow = Extractor("vgg11", weights="random", scales=[224], flip=False, device="cpu")  # fc7: seconds per shard
    reported = []

    def kill_shard_2_midway(images: int) -> None:
        reported.append(images)
        if sum(reported) >= 4 and sum(reported) - images < 4:  # about 2 images into each shard
            [process] = [p for p in multiprocessing.active_children() if p.name == "vggfeat-device-2-of-2"]
            os.kill(process.pid, signal.SIGKILL)

    with pytest.raises(VggfeatError, match=r"shard 2/2 on cpu: its process ended with exit code -9 before finishing. "
                                           r"The other shards stopped; their work is kept in .*out.h5.shards: run the same"):
        MultiDeviceJob(slow, ["cpu", "cpu"], images, output, part_images=1).run(progress=kill_shard_2_midway)
    assert not output.exists()
    held = [(work_progress(shards_folder(output) / f"shard-{k}-of-2.h5") or (0, 0))[0] for k in (1, 2)]
    assert 0 < held[0] < 6, held  # shard 1 stopped midway, keeping its finished parts
    result = MultiDeviceJob(slow, ["cpu", "cpu"], images, output, part_images=1).run()
    assert result.computed == 12 - sum(held) and result.rows == 12
    assert_same_output(read_output(output), _one_run(slow, images, tmp_path), atol=1e-4)
    assert not shards_folder(output).exists()


def test_a_shard_file_of_other_options_is_not_replaced_without_overwrite(tmp_path):
    write_plain_folder(tmp_path / "images", 2)
    images, output = find_images(tmp_path / "images"), tmp_path / "out.h5"
    shards_folder(output).mkdir()
    foreign = shards_folder(output) / "shard-2-of-2.h5"
    ExtractionJob(cheap_extractor(min_side=8), images.shard(2, 2), foreign).run()
    before = foreign.read_bytes()
    with pytest.raises(VggfeatError, match=r"shard 2/2 on cpu: .*shard-2-of-2.h5 already exists, made with other options "
                                             r"\(min_side: 8 then, 32 now\); pass --overwrite"):
        MultiDeviceJob(cheap_extractor(), ["cpu", "cpu"], images, output).run()
    assert foreign.read_bytes() == before and not output.exists()
    MultiDeviceJob(cheap_extractor(), ["cpu", "cpu"], images, output, overwrite=True).run()
    assert_same_output(read_output(output), _one_run(cheap_extractor(), images, tmp_path), atol=1e-5)


def _interrupted_in_two_blocks(extractor: Extractor, images: ImageSet, output, monkeypatch) -> None:
    """A run of ``images`` on two devices into ``output``, its first block finished, its second
    killed after its first part."""
    shards = shards_folder(output)
    shards.mkdir()
    ExtractionJob(extractor, images.shard(1, 2), shards / "shard-1-of-2.h5").run()
    crash_on_part(monkeypatch, 2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ExtractionJob(extractor, images.shard(2, 2), shards / "shard-2-of-2.h5", part_images=1).run()
    monkeypatch.undo()


def test_an_interrupted_run_resumes_shard_by_shard(tmp_path, monkeypatch):
    """A finished shard is not described again, an interrupted one only where its parts end."""
    write_plain_folder(tmp_path / "images", 6)
    images, output = find_images(tmp_path / "images"), tmp_path / "out.h5"
    extractor = cheap_extractor()
    _interrupted_in_two_blocks(extractor, images, output, monkeypatch)
    job = MultiDeviceJob(cheap_extractor(), ["cpu", "cpu"], images, output)
    assert (job.done, job.total) == (4, 6)
    result = job.run()
    assert (result.rows, result.failed, result.computed) == (6, 0, 2)
    assert_same_output(read_output(output), _one_run(extractor, images, tmp_path), atol=1e-5)


def test_an_interrupted_run_is_not_resumed_over_other_images_of_the_same_names(tmp_path, monkeypatch):
    """Another folder with the same file names: its blocks, finished or interrupted, are other images."""
    write_plain_folder(tmp_path / "images", 4)
    write_plain_folder(tmp_path / "other", 4, start_seed=10)
    images, other, output = find_images(tmp_path / "images"), find_images(tmp_path / "other"), tmp_path / "out.h5"
    extractor = cheap_extractor()
    _interrupted_in_two_blocks(extractor, images, output, monkeypatch)
    with pytest.raises(VggfeatError) as refused:
        MultiDeviceJob(cheap_extractor(), ["cpu", "cpu"], other, output).run()
    message = str(refused.value)  # the block that fails first stops the other: either refusal
    assert (f"image folder: {tmp_path / 'images'} then, {tmp_path / 'other'} now" in message
            or ("shard 1/2 on cpu: " in message and "shard-1-of-2.h5 already exists" in message)), message
    MultiDeviceJob(cheap_extractor(), ["cpu", "cpu"], other, output, overwrite=True).run()  # the finished block too
    assert_same_output(read_output(output), _one_run(extractor, other, tmp_path), atol=1e-5)


@pytest.mark.parametrize(("images", "devices", "blocks"), [
    (100, 2, 2), (10**6, 8, 8), (1_599_999, 8, 8), (1_600_000, 8, 16), (2 * 10**6, 8, 16), (10**7, 8, 64),
    (10**7, 3, 24), (10**9, 8, 64)])
def test_large_collections_get_several_blocks_per_device(images, devices, blocks):
    """At least BLOCK_IMAGES (100,000) images a block, 8 blocks per device at most, the same number for each."""
    assert block_count(images, devices) == blocks


def test_a_device_that_is_done_takes_the_next_block(tmp_path, monkeypatch):
    """12 images in 6 blocks on two devices: each process takes blocks until none is left; the
    file is the one a single run writes."""
    monkeypatch.setattr("vggfeat.multidevice.BLOCK_IMAGES", 2)
    write_plain_folder(tmp_path / "images", 12)
    output = tmp_path / "out.h5"
    code, _, err = run_main(["extract", tmp_path / "images", output, *CHEAP, *TWO_CPUS])
    assert code == 0, err
    assert "6 blocks of 2 images or more: each device takes the next one left as it finishes one" in err
    assert "12 descriptors (64-d float32), 0 failed; 12 images in" in err
    merged = read_output(output)
    assert sorted(shard["shard"] for shard in json.loads(merged["attrs"]["shards"])) == [1, 2, 3, 4, 5, 6]
    assert_same_output(merged, _one_run(cheap_extractor(), find_images(tmp_path / "images"), tmp_path), atol=1e-5)
    assert not shards_folder(output).exists()


def test_a_machines_shard_on_several_devices_merges_with_the_other_shards(tmp_path, monkeypatch):
    """Several machines of several GPUs: --shard K/N with --device A,B writes the file of shard
    K/N that one device writes, its blocks cut from the shard; 'merge' joins it with the others
    into the file of one run."""
    monkeypatch.setattr("vggfeat.multidevice.BLOCK_IMAGES", 2)
    write_plain_folder(tmp_path / "images", 16)
    shard = ["extract", tmp_path / "images", *CHEAP]
    code, _, err = run_main([*shard, tmp_path / "first.h5", "--shard", "1/2", *TWO_CPUS])
    assert code == 0, err
    assert "shard 1/2: 8 of the 16 images" in err and "on cpu, cpu (a process each)" in err
    assert "4 blocks of 2 images or more" in err and "8 descriptors (64-d float32), 0 failed" in err
    assert run_main([*shard, tmp_path / "second.h5", "--shard", "2/2", "-q"])[0] == 0
    # A collection smaller than its shards: an empty one, written and merged as any other.
    write_plain_folder(tmp_path / "one", 1)
    code, _, err = run_main(["extract", tmp_path / "one", tmp_path / "empty.h5", *CHEAP, "--shard", "1/2", *TWO_CPUS])
    assert code == 0 and "0 descriptors (64-d float32), 0 failed; no image to describe" in err, err
    first = read_output(tmp_path / "first.h5")
    collection = find_images(tmp_path / "images")
    assert (first["attrs"]["shard_index"], first["attrs"]["shard_count"]) == (1, 2)
    assert (first["attrs"]["collection_images"], first["attrs"]["collection_sha256"]) == (16, collection.digest())
    assert first["attrs"]["images_sha256"] == collection.shard(1, 2).digest()
    assert sorted(shard["shard"] for shard in json.loads(first["attrs"]["shards"])) == [1, 2, 3, 4]
    (tmp_path / "one shard").mkdir()
    assert_same_output(first, _one_run(cheap_extractor(), collection.shard(1, 2), tmp_path / "one shard"), atol=1e-5)
    code, _, err = run_main(["merge", tmp_path / "second.h5", tmp_path / "first.h5", tmp_path / "out.h5"])
    assert code == 0, err
    assert_same_output(read_output(tmp_path / "out.h5"), _one_run(cheap_extractor(), collection, tmp_path), atol=1e-5)


def test_the_disk_a_run_needs_is_its_rows_and_one_block_less_those_done(tmp_path):
    """Each row once, in its block's file, then in the merged file, where a block's rows are for a
    moment in both (the warning before the run would otherwise cry wolf)."""
    write_plain_folder(tmp_path / "images", 4)
    images, output = find_images(tmp_path / "images"), tmp_path / "out.h5"
    row = 64 * 4 + vggfeat.job._ROW_EXTRAS  # conv1_1, float32
    job = MultiDeviceJob(cheap_extractor(), ["cpu", "cpu"], images, output)
    assert job.disk_needed() == (4 + 2) * row
    job.close()
    ExtractionJob(cheap_extractor(), images.shard(1, 2), shards_folder(output) / "shard-1-of-2.h5").run()
    job = MultiDeviceJob(cheap_extractor(), ["cpu", "cpu"], images, output)
    assert job.disk_needed() == (2 + 2) * row
    job.run()
    done = MultiDeviceJob(cheap_extractor(), ["cpu", "cpu"], images, output)  # the same job again: nothing to do
    assert done.already_done and done.disk_needed() == 0 and done.run().already_done


def two_blocks_finished(tmp_path) -> tuple:
    """Six images in two blocks, each finished by a run interrupted before its merge: (the
    images, the output, its shards folder)."""
    write_plain_folder(tmp_path / "images", 6)
    images, output = find_images(tmp_path / "images"), tmp_path / "out.h5"
    shards = shards_folder(output)
    shards.mkdir()
    for k in (1, 2):
        ExtractionJob(cheap_extractor(), images.shard(k, 2), shards / f"shard-{k}-of-2.h5").run()
    return images, output, shards


@pytest.mark.parametrize("merged_file", ["kept", "broken", "removed"])
def test_blocks_merged_with_each_row_on_disk_once_and_a_killed_merge_resumed(tmp_path, monkeypatch, merged_file):
    """A block's rows go into the merged file before its own file is written anew without them:
    killed between two blocks, the run goes on merging; the merged file broken by a kill as it
    was completed gives its rows back from its bytes; removed, its blocks are described again."""
    images, output, shards = two_blocks_finished(tmp_path)
    whole = (shards / "shard-1-of-2.h5").stat().st_size
    append, appended = vggfeat.output.OutputFile.append, []

    def killed_on_the_second_block(*args):
        appended.append(args)
        if len(appended) == 2:
            raise RuntimeError("simulated kill")
        return append(*args)

    monkeypatch.setattr(vggfeat.output.OutputFile, "append", killed_on_the_second_block)
    with pytest.raises(RuntimeError, match="simulated kill"):
        MultiDeviceJob(cheap_extractor(), ["cpu"], images, output).run()
    monkeypatch.undo()
    with h5py.File(shards / "shard-1-of-2.h5", "r") as f:  # its rows are in the merged file only
        assert f["features"].shape == (0, 64) and f.attrs["first_row"] == 0 and f.attrs["rows"] == 3
    assert whole - (shards / "shard-1-of-2.h5").stat().st_size >= 3 * 64 * 4  # its rows' bytes are gone
    merged = shards / "merged-of-2.h5"
    if merged_file == "broken":
        with open(merged, "r+b") as f:
            f.write(bytes(2048))
    elif merged_file == "removed":
        merged.unlink()

    job = MultiDeviceJob(cheap_extractor(), ["cpu"], images, output)
    assert job.done == (3 if merged_file == "removed" else 6)
    result = job.run()
    assert result.computed == (3 if merged_file == "removed" else 0)
    ExtractionJob(cheap_extractor(), images, tmp_path / "one.h5").run()
    data = read_output(output)
    assert not {"first_row", "rows", "chunk_rows"} & set(data["attrs"])
    assert_same_output(data, read_output(tmp_path / "one.h5"))
    assert not shards.exists()


def test_a_finished_block_damaged_since_is_refused_not_merged(tmp_path):
    """A block that an interrupted run finished, a row of which turned NaN on the disk since: the
    resumed run refuses it, naming the block, the row and the image, rather than merge a NaN
    descriptor (which extraction never writes) into the output; that block removed, the same
    command describes its images again and writes the file one run writes."""
    images, output, shards = two_blocks_finished(tmp_path)
    damaged = shards / "shard-2-of-2.h5"
    with h5py.File(damaged, "r+") as f:
        f["features"][1, 5] = np.nan
        image = f["paths"][1].decode()
    command = ["extract", tmp_path / "images", output, *CHEAP, *TWO_CPUS]
    code, _, err = run_main(command)
    assert code == 2 and error_line(err) == (
        f"Error: {damaged} is damaged: row 1 of its /features ({image}) holds NaN or infinite values, which extraction "
        "never writes; remove that file and run the same command again, which describes its images again")
    assert not output.exists()
    damaged.unlink()
    code, _, err = run_main(command)
    assert code == 0, err
    assert_same_output(read_output(output), _one_run(cheap_extractor(), images, tmp_path), atol=1e-5)


def test_a_run_resumes_in_its_blocks_on_another_number_of_devices(tmp_path, monkeypatch):
    """Interrupted in 4 blocks (one finished, one in parts), resumed on 3 devices: its blocks are
    kept, and each image is described once."""
    write_plain_folder(tmp_path / "images", 8)
    images, output = find_images(tmp_path / "images"), tmp_path / "out.h5"
    extractor, shards = cheap_extractor(), shards_folder(output)
    shards.mkdir()
    ExtractionJob(extractor, images.shard(1, 4), shards / "shard-1-of-4.h5").run()
    crash_on_part(monkeypatch, 2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ExtractionJob(extractor, images.shard(3, 4), shards / "shard-3-of-4.h5", part_images=1).run()
    monkeypatch.undo()
    job = MultiDeviceJob(cheap_extractor(), ["cpu", "cpu", "cpu"], images, output)
    assert (job.blocks, job.done) == (4, 3)
    result = job.run()
    assert (result.rows, result.computed) == (8, 5)
    assert_same_output(read_output(output), _one_run(extractor, images, tmp_path), atol=1e-5)


def test_a_run_on_several_devices_resumes_on_one(tmp_path):
    """A batch system gives the next job one GPU: the same command on one device goes on with the
    interrupted run's blocks, one after another, rather than describe every image again beside them."""
    write_plain_folder(tmp_path / "images", 8)
    images, output = find_images(tmp_path / "images"), tmp_path / "out.h5"
    shards = shards_folder(output)
    shards.mkdir()
    ExtractionJob(cheap_extractor(), images.shard(1, 4), shards / "shard-1-of-4.h5").run()
    code, _, err = run_main(["info", output])
    assert code == 2 and ("out.h5 is not written yet: an interrupted or running extraction on several devices has "
                          "finished 1 of its 4 blocks, and holds 2 images") in error_line(err)
    code, _, err = run_main(["extract", tmp_path / "images", output, *CHEAP])
    assert code == 0, err
    assert "the interrupted run on several devices goes on here, its 4 blocks one after another" in err
    assert "resuming: 2 of 8 images were done by an interrupted run" in err and "6 images in" in err
    assert_same_output(read_output(output), _one_run(cheap_extractor(), images, tmp_path), atol=1e-5)
    assert not shards.exists() and not work_folder(output).exists()


def test_a_run_on_a_number_of_devices_its_work_cannot_take_is_refused_or_discarded(tmp_path, monkeypatch):
    """A run interrupted on one device keeps parts of the whole collection, which blocks cannot
    take: several devices refuse it, saying how to resume it, and --overwrite discards it. An
    ExtractionJob refuses the blocks of a run on several devices in the same way."""
    write_plain_folder(tmp_path / "images", 4)
    images, output = find_images(tmp_path / "images"), tmp_path / "out.h5"
    crash_on_part(monkeypatch, 2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ExtractionJob(cheap_extractor(), images, output, part_images=1).run()
    monkeypatch.undo()
    args = ["extract", tmp_path / "images", output, *CHEAP, *TWO_CPUS]
    code, _, err = run_main(args)
    assert code == 2 and "out.h5.parts holds a run on one device, running or interrupted: run the same command on " \
                          "one device to resume it, or pass --overwrite to discard it" in error_line(err)
    assert work_progress(output) == (1, 4) and not output.exists()
    code, _, err = run_main([*args, "--overwrite"])
    assert code == 0 and "4 images in" in err, err
    assert not work_folder(output).exists() and not shards_folder(output).exists()

    output.unlink()
    shards_folder(output).mkdir()
    ExtractionJob(cheap_extractor(), images.shard(2, 2), shards_folder(output) / "shard-2-of-2.h5").run()
    with pytest.raises(VggfeatError, match=r"out.h5.shards holds a run on several devices, running or interrupted: resume "
                                           r"it on any number of devices \(--device, MultiDeviceJob\), or pass --overwrite"):
        ExtractionJob(cheap_extractor(), images, output)
    ExtractionJob(cheap_extractor(), images, output, overwrite=True).run()
    assert not shards_folder(output).exists() and read_output(output)["paths"] == list(images.paths)


def test_sigterm_stops_every_shard_keeping_their_parts(tmp_path):
    """A batch system's time limit: SIGTERM to the command stops every device's process."""
    write_plain_folder(tmp_path / "images", 12)
    output, shards = tmp_path / "out.h5", tmp_path / "out.h5.shards"
    args = ["extract", tmp_path / "images", output, *FAST, *TWO_CPUS, "--part-size", "1"]
    shard_processes = terminated(args, shards, parts="*.parts/part-*.h5")
    assert not output.exists()
    assert len(shard_processes) >= 2 and not any(map(running, shard_processes)), "processes outlived the run"
    held = sum((work_progress(shards / f"shard-{k}-of-2.h5") or (0, 0))[0] for k in (1, 2))
    code, _, err = run_main(args)
    assert code == 0 and f"resuming: {held:,} of 12 images were done" in err and f"{12 - held:,} images in" in err, err


def test_shards_stop_when_the_command_is_killed(tmp_path):
    """kill -9 of the command (no chance to stop them): its shards' processes stop by themselves."""
    write_plain_folder(tmp_path / "images", 12)
    shards = tmp_path / "out.h5.shards"
    args = ["extract", tmp_path / "images", tmp_path / "out.h5", *FAST, *TWO_CPUS, "--part-size", "1"]
    process = started_until_a_part(args, shards, parts="*.parts/part-*.h5")
    shard_processes = children(process.pid)
    process.kill()
    process.communicate()
    try:
        assert len(shard_processes) >= 2 and not any(running(pid, wait=30) for pid in shard_processes)
    finally:
        for pid in filter(running, shard_processes):
            os.kill(pid, signal.SIGKILL)
    assert run_main(args)[0] == 0  # and the run resumes


def test_a_device_process_watches_the_command_itself_not_whichever_process_is_its_parent(tmp_path):
    """Started by the fork server, a device's process has the server for its parent, which can
    outlive a command killed with kill -9: the processes described on unseen for minutes, and the
    command run again found their shards locked. It watches the command's own process now."""
    script = ("import signal, subprocess, time\n"
              "from vggfeat.multidevice import _stop_when_orphaned\n"
              "def stop(*_): raise KeyboardInterrupt  # as the process's own _interrupt does\n"
              "signal.signal(signal.SIGTERM, stop)\n"
              "command = subprocess.Popen(['sleep', '2'])  # the command; not this process's parent\n"
              "began = time.monotonic()\n"
              "try:\n"
              "    _stop_when_orphaned(command.pid)\n"
              "    time.sleep(30)\n"
              "except KeyboardInterrupt:\n"
              "    print(time.monotonic() - began)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert 1.5 < float(result.stdout) < 20  # stopped once the command ended, neither before nor never


def _one_run(extractor: Extractor, images, folder) -> dict:
    ExtractionJob(extractor, images, folder / "one.h5").run()
    return read_output(folder / "one.h5")


def test_a_run_killed_after_its_merge_was_renamed_tidies_up_without_describing_again(tmp_path, monkeypatch):
    """Killed as it removed its shards (the output whole): every block was described again, the
    merged file being taken for lost; an emptied shards folder (a kill later in that removal)
    made every command refuse the output."""
    write_plain_folder(tmp_path / "images", 4)
    images, output = find_images(tmp_path / "images"), tmp_path / "out.h5"
    remove = vggfeat.multidevice.shutil.rmtree

    def killed(path, *args, **kwargs):
        if str(path).endswith(".shards"):
            raise KeyboardInterrupt  # as a kill before the shards are removed
        remove(path, *args, **kwargs)

    monkeypatch.setattr(vggfeat.multidevice.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        MultiDeviceJob(cheap_extractor(), ["cpu", "cpu"], images, output).run()
    monkeypatch.undo()
    assert output.exists() and shards_folder(output).exists()
    expected = read_output(output)
    job = MultiDeviceJob(cheap_extractor(), ["cpu", "cpu"], images, output)
    assert job.done == job.total == 4 and job.run().computed == 0
    assert_same_output(read_output(output), expected) and not shards_folder(output).exists()
    shards_folder(output).mkdir()
    (shards_folder(output) / "lock").touch()
    args = ["extract", tmp_path / "images", output, *CHEAP]
    for run in ([*args, *TWO_CPUS], args, [*args, "--update"]):
        code, _, err = run_main(run)
        assert code == 0, (run, err)
        assert not shards_folder(output).exists()
        shards_folder(output).mkdir()
        (shards_folder(output) / "lock").touch()


def test_no_run_on_one_device_nor_an_update_writes_the_output_of_a_run_on_several(tmp_path):
    """Each locked its own folder (OUTPUT.parts, OUTPUT.shards): both ran, and the last to end
    replaced the other's file; stack and merge wrote it meanwhile, to be replaced as it ended."""
    write_plain_folder(tmp_path / "images", 2)
    images, output = find_images(tmp_path / "images"), tmp_path / "out.h5"
    for name in ("a.h5", "b.h5", "out.h5"):
        ExtractionJob(cheap_extractor(), images, tmp_path / name).run()
    job = MultiDeviceJob(cheap_extractor(), ["cpu", "cpu"], images, output, overwrite=True)
    for refused in (lambda: ExtractionJob(cheap_extractor(), images, output, overwrite=True),
                    lambda: vggfeat.update.OutputUpdate(cheap_extractor(), images, output),
                    lambda: vggfeat.stack.stack_files([tmp_path / "a.h5", tmp_path / "b.h5"], output, overwrite=True)):
        with pytest.raises(VggfeatError, match=r"another vggfeat run is writing .*out.h5 \(lock held on .*out.h5"):
            refused()
    job.close()
    vggfeat.update.OutputUpdate(cheap_extractor(), images, output).close()


# --------------------------------------------------------------------------- refusals


def test_a_folder_that_is_not_the_runs_own_is_refused_untouched(tmp_path):
    write_plain_folder(tmp_path / "images", 2)
    images, output = find_images(tmp_path / "images"), tmp_path / "out.h5"
    shards = shards_folder(output)
    shards.mkdir()
    (shards / "notes.txt").write_text("mine")
    with pytest.raises(VggfeatError, match=r"out.h5.shards exists but is not a vggfeat shards folder"):
        MultiDeviceJob(cheap_extractor(), ["cpu", "cpu"], images, output)
    (shards / "notes.txt").unlink()
    (shards / "shard-1-of-3.h5").write_text("a run on three devices")
    job = MultiDeviceJob(cheap_extractor(), ["cpu", "cpu"], images, output)  # its 3 blocks, adopted: not replaced
    with pytest.raises(VggfeatError, match=r"shard 1/3 on cpu: .*shard-1-of-3.h5 already exists; pass --overwrite"):
        job.run()
    (shards / "shard-1-of-2.h5").write_text("a run on two devices")
    with pytest.raises(VggfeatError, match=r"holds the shards of interrupted runs in 2 and 3 blocks: pass --overwrite"):
        MultiDeviceJob(cheap_extractor(), ["cpu", "cpu"], images, output)
    assert (shards / "shard-1-of-3.h5").read_text() == "a run on three devices"
    assert (shards / "shard-1-of-2.h5").read_text() == "a run on two devices"
    for name in ("shard-1-of-2.h5", "shard-1-of-3.h5"):
        (shards / name).unlink()
    output.write_text("the user's")
    with pytest.raises(VggfeatError, match=r"out.h5 already exists; pass --overwrite"):
        MultiDeviceJob(cheap_extractor(), ["cpu", "cpu"], images, output)
    assert output.read_text() == "the user's"
    with pytest.raises(VggfeatError, match=r"make the extractor from an architecture name"):
        MultiDeviceJob(Extractor(cheap_extractor().network, device="cpu", layer="conv1_1"), ["cpu", "cpu"], images, output)


def test_an_update_on_several_devices_writes_what_a_fresh_run_writes(tmp_path):
    """A collection of millions that grew: its new images are described on every GPU."""
    root, output = tmp_path / "images", tmp_path / "out.h5"
    write_plain_folder(root, 3)
    assert run_main(["extract", root, output, *CHEAP, "-q"])[0] == 0
    write_plain_folder(root / "more", 4, start_seed=10)
    (root / "img01.png").unlink()
    assert run_main(["extract", root, tmp_path / "reference.h5", *CHEAP, "-q"])[0] == 0
    code, _, err = run_main(["extract", root, output, *CHEAP, *TWO_CPUS, "--update"])
    assert code == 0, err
    assert "on cpu, cpu (a process each)" in err and "4 images added, 1 left out; 4 images in" in err and "on cpu, cpu" in err
    updated = read_output(output)
    assert_same_output(updated, read_output(tmp_path / "reference.h5"), atol=1e-5)
    assert json.loads(updated["attrs"]["updated_with"])["device"] == "cpu"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["images", "out.h5", "reference.h5"]  # nothing left


def test_a_retry_on_several_devices_describes_the_repaired_images(tmp_path):
    root, output = tmp_path / "images", tmp_path / "out.h5"
    write_plain_folder(root, 2)
    for name in ("x.png", "y.png", "z.png"):
        (root / name).write_text("not yet an image")
    assert run_main(["extract", root, output, *CHEAP, "-q"])[0] == 0
    for i, name in enumerate(("x.png", "y.png")):
        write_rgb(root / name, 224, 230, seed=20 + i)  # repaired since
    code, _, err = run_main(["extract", root, output, *CHEAP, *TWO_CPUS, "--retry-failed"])
    assert code == 0, err
    assert "2 of the 3 images that had failed are described now" in err
    assert read_output(output)["failed_paths"] == ["z.png"]
    assert_same_output(read_output(output), _one_run(cheap_extractor(), find_images(root), tmp_path), atol=1e-5)


def test_an_update_interrupted_on_several_devices_goes_on_on_one(tmp_path):
    root, output = tmp_path / "images", tmp_path / "out.h5"
    write_plain_folder(root, 2)
    assert run_main(["extract", root, output, *CHEAP, "-q"])[0] == 0
    write_plain_folder(root / "more", 4, start_seed=10)
    assert run_main(["extract", root, tmp_path / "reference.h5", *CHEAP, "-q"])[0] == 0
    # As a run on two devices leaves it when killed with one of its two blocks done.
    images, staging = find_images(root), tmp_path / "out.h5.new-images.h5"
    chosen = [i for i, path in enumerate(images.paths) if path.startswith("more/")]  # what the update describes
    new_images = ImageSet(images.root, tuple(images.paths[i] for i in chosen), images.labels[chosen], images.classes)
    shards_folder(staging).mkdir()
    ExtractionJob(cheap_extractor(), new_images.shard(1, 2), shards_folder(staging) / "shard-1-of-2.h5",
                  provenance={"update_of": output.name}).run()
    code, out, _ = run_main(["info", output])
    assert code == 0 and ("under way    --update on several devices, running or interrupted: 2 images described, "
                          "1 of 2 blocks finished; the same command, on any number of devices, finishes it") in out
    code, _, err = run_main(["extract", root, output, *CHEAP, "--update"])
    assert code == 0, err
    assert "the interrupted run on several devices goes on here, its 2 blocks one after another" in err
    assert "resuming: 2 of 4 images were done by an interrupted run" in err and "4 images added, 0 left out; 2 images in" in err
    assert_same_output(read_output(output), read_output(tmp_path / "reference.h5"), atol=1e-5)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["images", "out.h5", "reference.h5"]


def test_an_update_interrupted_on_one_device_is_finished_on_one(tmp_path, monkeypatch):
    """Its parts cover the new images as one run cuts them, which blocks cannot take: several
    devices would have to discard them."""
    root, output = tmp_path / "images", tmp_path / "out.h5"
    write_plain_folder(root, 2)
    args = ["extract", root, output, *CHEAP, "--part-size", "1"]
    assert run_main([*args, "-q"])[0] == 0
    write_plain_folder(root / "more", 3, start_seed=10)
    crash_on_part(monkeypatch, 2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_main([*args, "--update"])
    monkeypatch.undo()
    code, _, err = run_main([*args, *TWO_CPUS, "--update"])
    assert code == 2 and "this --update was interrupted on one device: run it on one device to finish it" in error_line(err)
    code, _, err = run_main([*args, "--update"])
    assert code == 0 and "resuming: 1 of 3 images were done by an interrupted run" in err, err


def test_a_bad_device_in_the_list_is_refused_before_work(tmp_path):
    write_plain_folder(tmp_path / "images", 1)
    code, _, err = run_main(["extract", tmp_path / "images", tmp_path / "out.h5", *CHEAP, "--device", "cpu,gpu9"])
    assert code == 2 and "unknown device 'gpu9'" in error_line(err)


_PRELOAD_QUERIES = """
import importlib, torch
from vggfeat.processes import FORKSERVER_PRELOAD
asked, count = [], torch._C._cuda_getDeviceCount
torch._C._cuda_getDeviceCount = lambda: asked.append(1) or count()
for name in FORKSERVER_PRELOAD:
    importlib.import_module(name)
print(len(asked), torch.cuda.is_initialized())
"""


def test_the_fork_server_imports_without_touching_cuda():
    """The devices' processes are forked from a server that imported FORKSERVER_PRELOAD: had an
    import asked CUDA anything (torch.cuda.is_available() initialises its driver), each GPU's
    process would inherit a driver that cannot work after a fork."""
    ran = subprocess.run([sys.executable, "-c", _PRELOAD_QUERIES], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["0", "False"]


# --------------------------------------------------------------------------- the GPU of each thread
# CUDA's current device is per thread and starts at GPU 0: a process working on cuda:1 whose threads
# never set it opens a context on GPU 0 too (its memory taken there) as soon as a thread switches
# streams, pins memory or waits on an event. Simulated here without a GPU: torch.cuda.set_device
# records each thread's device, and the work recorded sees its thread's.


@pytest.fixture
def thread_devices(monkeypatch):
    """Each thread's current CUDA device as torch.cuda.set_device sets it (None: never set, GPU 0)."""
    import threading

    current = threading.local()

    def set_device(device):
        current.index = device.index if isinstance(device, torch.device) else int(device)

    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: getattr(current, "index", 0))
    return lambda: (threading.current_thread().name, getattr(current, "index", None))


def test_a_device_process_sets_its_gpu_before_any_work(thread_devices, monkeypatch):
    """Each device's process makes its device current before it builds its extractor."""
    seen = []

    class Recording:
        def __init__(self, **arguments):
            seen.append(thread_devices())
            raise VggfeatError("recorded")

    for name in ("_stop_when_orphaned", "quiet_decoding_libraries"):
        monkeypatch.setattr(vggfeat.multidevice, name, lambda *args: None)
    monkeypatch.setattr(vggfeat.multidevice.signal, "signal", lambda *args: None)  # this process's own stay
    monkeypatch.setattr(vggfeat.multidevice, "resolve_device", torch.device)  # cuda:1 without a GPU
    said = []
    parent = SimpleNamespace(send=said.append)
    vggfeat.multidevice._describe_blocks(1, Recording, {}, "cuda:1", (1, None, None), parent, os.getpid(), "float32",
                                         16, False, {}, None)
    assert said == [("failed", "recorded")]
    assert seen == [("MainThread", 1)]


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
@pytest.mark.parametrize("device", ["cuda:1", "cuda"])
def test_a_readers_threads_each_set_its_gpu(thread_devices, monkeypatch, tmp_path, processes, device):
    """The reader's decoding threads (or, decoding in processes, the threads that receive, pin and
    upload their pixels) each make the reader's GPU current before they use it. A plain "cuda" is
    the reading thread's current device (here GPU 2), not a new thread's GPU 0."""
    import threading

    import vggfeat.processes
    import vggfeat.reading
    from vggfeat.processes import DecodingProcesses
    from vggfeat.reading import ImageReader

    torch.cuda.set_device(2)  # the reading thread's own
    used = []

    def decoding(self, paths, number, budget, limit=None):  # what would upload or decode on the GPU
        used.append(thread_devices())
        time.sleep(0.05)  # every thread gets some
        return list(paths), 0

    monkeypatch.setattr(ImageReader, "_decode_group", decoding)
    monkeypatch.setattr(DecodingProcesses, "_received", lambda self, files, number: decoding(self, files, number, None))
    monkeypatch.setattr(vggfeat.processes, "SLOT_BYTES", 1024)  # (a GPU's reader makes slots: small ones)
    monkeypatch.setattr(vggfeat.reading, "JPEG_GROUP", 1)  # a group per file: several threads
    paths = [tmp_path / f"{i}.jpg" for i in range(8)]
    reader = ImageReader(torch.device(device), "pil", workers=3, max_pixels=10**8, min_side=32, processes=processes)
    with reader.read(paths, lookahead=8) as results:
        assert list(results) == paths
    expected = 1 if device == "cuda:1" else 2
    assert len(used) == len(paths) and all(index == expected for _, index in used), used
    prefix = "vggfeat-receive" if processes else "vggfeat-decode"
    assert all(name.startswith(prefix) for name, _ in used) and len({name for name, _ in used}) > 1
    assert threading.current_thread().name == "MainThread"
