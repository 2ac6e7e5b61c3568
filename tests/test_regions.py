"""Regions of images as rows of their own: ``path#xywh=X,Y,W,H`` in a file list (a person's box,
an object's), described as the cropped picture alone, found, failed, resumed and updated by that
path as an image is by its own."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

import vggfeat.decode
import vggfeat.jpeg
from imagefiles import write_exif_rotated, write_rgb
from runhelpers import FAST, crash_on_part, error_line, read_output, run_main
from vggfeat import Extractor
from vggfeat.decode import decode_image
from vggfeat.discover import read_file_list
from vggfeat.errors import ImageError, InvalidInput, VggfeatError
from vggfeat.features import load_features
from vggfeat.labels import read_labels_csv
from vggfeat.regions import Region, count_regions, crop, from_corners, split_region
from vggfeat.store import count_regions_in

CHEAP = [*FAST, "--layer", "conv3_1"]


def write_list(path, lines):
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


# --------------------------------------------------------------------------- naming regions


def test_a_list_line_names_a_region_with_or_without_a_label(tmp_path):
    listed = write_list(tmp_path / "list.txt", [
        "people/a.jpg#xywh=10,20,30,40,walking",
        "people/a.jpg#xywh=pixel:0,0,5,6",          # the standard's unit, written out
        "b, with a comma.jpg#xywh=1,2,3,4,running",
        "people/a.jpg,walking",                       # the whole image, beside its regions
        f"{tmp_path}/people/c.jpg#xywh=7,8,9,10",     # absolute, under the root: kept relative
    ])
    images = read_file_list(listed)
    assert images.paths == ("b, with a comma.jpg#xywh=1,2,3,4", "people/a.jpg", "people/a.jpg#xywh=0,0,5,6",
                            "people/a.jpg#xywh=10,20,30,40", "people/c.jpg#xywh=7,8,9,10")
    assert [images.classes[k] if k >= 0 else None for k in images.labels] == ["running", "walking", None, "walking", None]
    files = images.files()
    assert [file.relative_to(tmp_path).as_posix() for file in files] == [
        "b, with a comma.jpg", "people/a.jpg", "people/a.jpg", "people/a.jpg", "people/c.jpg"]
    assert list(files.regions()) == [Region(1, 2, 3, 4), None, Region(0, 0, 5, 6), Region(10, 20, 30, 40), Region(7, 8, 9, 10)]
    assert list(files[2:4].regions()) == [Region(0, 0, 5, 6), Region(10, 20, 30, 40)]
    assert images.has_regions and not read_file_list(write_list(tmp_path / "plain.txt", ["a.jpg"])).has_regions


@pytest.mark.parametrize("line, words", [
    ("a.jpg#xywh=1,2,3", "a region is #xywh=X,Y,W,H in whole pixels"),
    ("a.jpg#xywh=percent:10,10,50,50", "a region is #xywh=X,Y,W,H in whole pixels"),
    ("a.jpg#xywh=-1,2,3,4,cats", "a region is #xywh=X,Y,W,H in whole pixels"),
    ("a.jpg#xywh=1,2,0,4", "the region is empty"),
])
def test_a_list_with_a_malformed_region_is_refused_naming_its_line(tmp_path, line, words):
    listed = write_list(tmp_path / "list.txt", ["b.jpg", line])
    with pytest.raises(VggfeatError, match=rf"list.txt:2: .*{words}"):
        read_file_list(listed)


def test_regions_and_their_images_are_counted_across_blocks_of_rows(tmp_path):
    """What extract and info say of a list or a file that holds regions: how many rows are regions,
    of how many images, read in blocks that may split an image's regions."""
    paths = ["a.jpg", "a.jpg#xywh=0,0,9,9", "a.jpg#xywh=5,5,9,9", "a.jpg#xywh=9,9,9,9", "b#xywh=c.jpg", "d.jpg#xywh=1,1,2,2"]
    assert count_regions(paths) == (4, 2) and count_regions(paths[:1]) == (0, 0)
    with h5py.File(tmp_path / "paths.h5", "w") as f:
        f["paths"] = np.array([path.encode() for path in paths], dtype=object)
        assert all(count_regions_in(f["paths"], step) == (4, 2) for step in (1, 2, 3, 100))


def test_a_box_by_its_corners_is_rounded_as_pil_crops():
    assert from_corners([30.5, 20.4, 250.5, 200.6]) == Region(30, 20, 220, 181)  # halves to even, as round()
    assert split_region("a.jpg") == ("a.jpg", None)
    assert split_region("x#y.jpg#xywh=1,2,3,4") == ("x#y.jpg", Region(1, 2, 3, 4))


def test_a_crop_is_clipped_to_the_image_and_the_same_for_arrays_and_tensors():
    image = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
    tensor = torch.from_numpy(image).permute(2, 0, 1)  # as torchvision's decoders give it
    for region, expected in ((Region(5, 4, 10, 8), image[4:12, 5:15]), (Region(25, 15, 100, 100), image[15:, 25:])):
        assert np.array_equal(crop(image, region, min_side=1), expected)
        cropped = crop(tensor, region, min_side=1)
        assert cropped.is_contiguous() and np.array_equal(cropped.permute(1, 2, 0).numpy(), expected)
    with pytest.raises(ImageError, match=r"the region lies outside the image \(30x20\)"):
        crop(image, Region(30, 0, 5, 5), min_side=1)
    with pytest.raises(ImageError, match="the region is 5x8 within the image; the smallest side must be at least 6 px"):
        crop(image, Region(25, 12, 50, 50), min_side=6)
    for bad in (Region(0, 0, -5, 8), Region(0, 0, 0, 8), Region(0, 0, 10.5, 8)):  # said "outside the image", or a slice error
        with pytest.raises(ImageError, match=r"a region is whole pixels, its width and height above 0: got \(0, 0, "):
            crop(image, bad, min_side=1)


# --------------------------------------------------------------------------- describing regions


def write_people(root):
    """A JPEG (decoded by torchvision, as tensors) and an EXIF-rotated PNG (by PIL, as arrays)."""
    root.mkdir(parents=True, exist_ok=True)
    write_rgb(root / "street.jpg", 240, 320, seed=3)
    write_exif_rotated(root / "turned.png", orientation=6, height=200, width=280, fmt="PNG")


def test_a_region_row_is_the_descriptor_of_its_crop_alone(tmp_path, random_vgg16):
    """Each region's row equals the descriptor of its upright image's crop described alone (the
    reference: the array cropped by hand); a box past the image is clipped; a region outside the
    image, or too small, is a failure of its own; the whole image keeps its row."""
    root = tmp_path / "images"
    write_people(root)
    listed = write_list(tmp_path / "regions.txt", [
        "street.jpg#xywh=40,30,120,200,walking", "street.jpg#xywh=200,100,500,500,running",
        "turned.png#xywh=10,50,150,100,walking",  # upright, turned.png is 280 high and 200 wide
        "turned.png#xywh=300,0,50,50,running", "turned.png#xywh=0,0,20,100,walking", "street.jpg,running",
    ])
    output = tmp_path / "regions.h5"
    code, _, err = run_main(["extract", "--file-list", listed, "--root", root, output, *CHEAP])
    assert code == 0, err
    assert "1 image and 5 regions of 2 images, 2 classes" in err
    said = "rows         4 (4 labelled) of 6 listed\n  regions      3 rows are regions (path#xywh=X,Y,W,H) of 2 images"
    code, out, _ = run_main(["info", output])
    assert code == 0 and said in out
    with h5py.File(output, "r") as f:  # counted once, as the file was completed
        assert (f.attrs["regions"], f.attrs["region_images"]) == (3, 2)
    counted = tmp_path / "counted.h5"
    counted.write_bytes(output.read_bytes())
    with h5py.File(counted, "r+") as f:  # a file without the count (other code's): counted by info
        del f.attrs["regions"], f.attrs["region_images"]
    assert said in run_main(["info", counted])[1]
    written = read_output(output)
    assert written["paths"] == ["street.jpg", "street.jpg#xywh=200,100,500,500", "street.jpg#xywh=40,30,120,200",
                                "turned.png#xywh=10,50,150,100"]
    assert [written["classes"][k] for k in written["labels"]] == ["running", "running", "walking", "walking"]
    assert written["sizes"].tolist() == [[240, 320], [140, 120], [200, 120], [100, 150]]  # each crop's height, width
    assert written["failed_paths"] == ["turned.png#xywh=0,0,20,100", "turned.png#xywh=300,0,50,50"]
    assert written["failed_errors"] == ["the region is 20x100 within the image; the smallest side must be at least 32 px",
                                        "the region lies outside the image (200x280)"]
    extractor = Extractor(random_vgg16, layer="conv3_1", scales=[224], flip=False, device="cpu")
    street, turned = decode_image(root / "street.jpg"), decode_image(root / "turned.png")
    assert turned.shape == (280, 200, 3)
    expected = extractor.describe([street, street[100:, 200:], street[30:230, 40:160], turned[50:150, 10:160]])
    np.testing.assert_allclose(written["features"], expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    assert np.abs(written["features"][2] - written["features"][0]).max() > 1e-2  # a region is not its image


def test_the_regions_of_an_image_decode_it_once(tmp_path, random_vgg16, monkeypatch):
    root = tmp_path / "images"
    write_people(root)
    real, opened = vggfeat.decode.open_image_file, []
    for module in (vggfeat.decode, vggfeat.jpeg):
        monkeypatch.setattr(module, "open_image_file", lambda path: opened.append(Path(path).name) or real(path))
    files = [root / "street.jpg"] * 3 + [root / "turned.png"] * 2 + [root / "street.jpg"]
    regions = [Region(0, 0, 64, 64), None, Region(40, 30, 120, 200), Region(0, 0, 50, 50), Region(0, 0, 9, 9), None]
    extractor = Extractor(random_vgg16, layer="conv1_1", scales=[224], flip=False, device="cpu")
    described = extractor.extract(files, regions=regions, errors="nan")
    assert opened.count("street.jpg") == 2 and opened.count("turned.png") <= 2  # a PNG is looked at as a JPEG first
    opened.clear()
    street, turned = decode_image(root / "street.jpg"), decode_image(root / "turned.png")
    expected = extractor.describe([street[:64, :64], street, street[30:230, 40:160], turned[:50, :50]])
    np.testing.assert_allclose(described[[0, 1, 2, 3, 5]], np.vstack([expected, expected[1:2]]), rtol=1e-5, atol=1e-6)
    assert np.isnan(described[4]).all()  # too small a region


def test_regions_given_as_plain_tuples_are_regions_and_other_values_are_refused(tmp_path, random_vgg16):
    """A Region is a named tuple (x, y, width, height): its four numbers as a plain tuple, a list or
    an array's row describe the same box (they ended in an AttributeError: 'tuple' object has no
    attribute 'width'). Anything else is refused, saying what a region is, before an image is read."""
    root = tmp_path / "images"
    write_people(root)
    files = [root / "street.jpg", root / "turned.png", root / "street.jpg"]
    extractor = Extractor(random_vgg16, layer="conv1_1", scales=[224], flip=False, device="cpu")
    expected = extractor.extract(files, regions=[Region(40, 30, 120, 200), None, Region(0, 0, 64, 64)])
    for regions in ([(40, 30, 120, 200), None, (0, 0, 64, 64)], [[40, 30, 120, 200], None, [0, 0, 64, 64]],
                    [np.array([40, 30, 120, 200]), None, np.array([0, 0, 64, 64], dtype=np.int32)]):
        np.testing.assert_allclose(extractor.extract(files, regions=regions), expected, rtol=1e-5, atol=1e-6)
    for wrong in ((40, 30, 120), "40,30,120,200", {"x": 40}):
        with pytest.raises(InvalidInput, match=r"region 1: expected a vggfeat.regions.Region\(x, y, width, height\), a "
                                               rf"tuple of those four whole numbers, or None \(the whole image\), got "
                                               rf"{re.escape(repr(wrong))}; a box of corners"):
            extractor.extract(files, regions=[None, wrong, None])
    with pytest.raises(InvalidInput, match=r"got one region: give \[Region\(x=0, y=0, width=64, height=64\)\]"):
        extractor.extract(files[:1] * 4, regions=Region(0, 0, 64, 64))


def test_regions_through_the_python_api_and_worker_processes(tmp_path, random_vgg16):
    root = tmp_path / "images"
    write_people(root)
    files, regions = [root / "street.jpg", root / "turned.png"], [Region(40, 30, 120, 200), None]
    threads = Extractor(random_vgg16, layer="conv3_1", scales=[224], device="cpu")
    described = threads.extract(files, regions=regions)
    processes = Extractor(random_vgg16, layer="conv3_1", scales=[224], device="cpu", decode_in="processes", workers=2)
    np.testing.assert_allclose(processes.extract(files, regions=regions), described, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(described[1:], threads.extract(files[1:]), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="2 paths but 1 regions"):
        threads.extract(files, regions=regions[:1])


@pytest.mark.parametrize("devices", ["cpu", "cpu,cpu"])
def test_regions_are_refused_with_jpeg_draft_before_any_work(tmp_path, devices):
    """On several devices too, before their processes start (a device's process refused it, and the
    command said to run it again to resume)."""
    root = tmp_path / "images"
    write_people(root)
    listed = write_list(tmp_path / "regions.txt", ["street.jpg#xywh=40,30,120,200", "street.jpg"])
    code, _, err = run_main(["extract", "--file-list", listed, "--root", root, tmp_path / "out.h5", *CHEAP, "--jpeg-draft",
                             "--device", devices])
    assert error_line(err) == "Error: jpeg_draft (--jpeg-draft) decodes a JPEG as small as its whole image allows, too " \
                              "small for a region of it: describe regions without it" and code == 2
    assert sorted(path.name for path in tmp_path.iterdir()) == ["images", "regions.txt"]


def test_a_killed_run_of_regions_resumes_and_an_update_describes_again_the_regions_of_a_changed_image(
        tmp_path, monkeypatch):
    root = tmp_path / "images"
    write_people(root)
    lines = [f"street.jpg#xywh={x},0,64,64" for x in range(0, 256, 32)] + ["turned.png#xywh=0,0,64,64"]
    listed = write_list(tmp_path / "regions.txt", lines)
    output, reference = tmp_path / "out.h5", tmp_path / "reference.h5"
    args = ["extract", "--file-list", listed, "--root", root, output, *CHEAP, "--part-size", "2"]
    crash_on_part(monkeypatch, 3)  # killed after describing four of the nine regions
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_main(args)
    monkeypatch.undo()
    code, _, err = run_main(args)
    assert code == 0 and "resuming: 4 of 9 images were done by an interrupted run" in err, err
    assert run_main(["extract", "--file-list", listed, "--root", root, reference, *CHEAP])[0] == 0
    resumed, fresh = read_output(output), read_output(reference)
    assert resumed["paths"] == fresh["paths"] and len(resumed["paths"]) == 9
    np.testing.assert_allclose(resumed["features"], fresh["features"], rtol=1e-5, atol=1e-6)

    write_rgb(root / "turned.png", 180, 220, seed=9)  # another picture under the same name
    code, _, err = run_main([*args, "--update"])
    assert code == 0 and "1 whose file changed since it was read" in err, err
    assert run_main(["extract", "--file-list", listed, "--root", root, reference, *CHEAP, "--overwrite"])[0] == 0
    updated, fresh = read_output(output), read_output(reference)
    assert updated["paths"] == fresh["paths"]
    np.testing.assert_allclose(updated["features"], fresh["features"], rtol=1e-5, atol=1e-6)
    assert not np.allclose(updated["features"][-1], resumed["features"][-1])  # turned.png's region, described again


# --------------------------------------------------------------------------- image and box (I+B)


def test_regions_fused_with_whole_images_stack_each_box_with_its_image(tmp_path):
    """The paper's VOC action setting I+B: a file of regions fused with a file of whole images gives
    each region its box's descriptor followed by its image's; a region whose image failed there is
    left out, saying why; an image without regions is not asked for."""
    root = tmp_path / "images"
    write_people(root)
    write_rgb(root / "empty.png", 230, 230, seed=4)  # no person in it
    write_rgb(root / "gone.jpg", 230, 230, seed=5)  # broken once its regions are described
    regions = write_list(tmp_path / "regions.txt", [
        "street.jpg#xywh=40,30,120,200,walking", "street.jpg#xywh=200,0,100,200,running",
        "turned.png#xywh=10,50,150,100,running", "gone.jpg#xywh=0,0,50,50,walking"])
    wholes = write_list(tmp_path / "images.txt", ["street.jpg", "turned.png", "empty.png", "gone.jpg"])
    assert run_main(["extract", "--file-list", regions, "--root", root, tmp_path / "boxes.h5", *CHEAP])[0] == 0
    (root / "gone.jpg").write_bytes(b"not a picture")
    assert run_main(["extract", "--file-list", wholes, "--root", root, tmp_path / "images.h5", *CHEAP])[0] == 0
    boxes, images = read_output(tmp_path / "boxes.h5"), read_output(tmp_path / "images.h5")
    with pytest.warns(RuntimeWarning, match=r"left out, having no descriptor \(e.g. gone.jpg#xywh=0,0,50,50: failed in "):
        fused = load_features([tmp_path / "boxes.h5", tmp_path / "images.h5"])
    assert fused.paths == boxes["paths"][1:] and len(fused.paths) == 3
    image_rows = [images["paths"].index(path.split("#")[0]) for path in fused.paths]
    np.testing.assert_array_equal(fused.X, np.hstack([boxes["features"][1:], images["features"][image_rows]]))
    assert [fused.classes[k] for k in fused.labels] == ["running", "walking", "running"]  # the regions' labels

    code, out, err = run_main(["train-svm", "--features", tmp_path / "boxes.h5", "--features", tmp_path / "images.h5",
                               tmp_path / "model.h5", "--C", "1"])
    assert code == 0 and "trained 2 classes on 3 rows" in out and "gone.jpg#xywh=0,0,50,50: failed in" in err, err
    code, _, err = run_main(["predict", tmp_path / "model.h5", tmp_path / "predictions.csv",
                             "--features", tmp_path / "boxes.h5", "--features", tmp_path / "images.h5"])
    assert code == 0, err
    with open(tmp_path / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["path"] for row in rows] == ["gone.jpg#xywh=0,0,50,50", *fused.paths]
    assert rows[0]["error"].startswith("failed in") and all(row["predicted"] for row in rows[1:])
    lone = write_list(tmp_path / "lone.txt", ["street.jpg"])
    assert run_main(["extract", "--file-list", lone, "--root", root, tmp_path / "lone.h5", *CHEAP])[0] == 0
    with pytest.raises(VggfeatError, match=r"cannot fuse .*boxes.h5 and .*lone.h5: 2 path\(s\) are not in the second "
                                           r"\(e.g. gone.jpg\)"):
        load_features([tmp_path / "boxes.h5", tmp_path / "lone.h5"])


def test_a_labels_csv_names_regions_quoted_or_not(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text('path,label\na.jpg#xywh=1,2,3,4,walking;running\n"a.jpg#xywh=5,6,7,8",jumping\n'
                      "b.jpg#xywh=pixel:0,0,9,9,walking\nc, d.jpg,walking\n")
    assert read_labels_csv(labels) == {"a.jpg#xywh=1,2,3,4": ["walking", "running"], "a.jpg#xywh=5,6,7,8": ["jumping"],
                                       "b.jpg#xywh=0,0,9,9": ["walking"], "c": ["d.jpg", "walking"]}


def test_a_montage_shows_a_region_hit_as_its_box(tmp_path):
    """search's picture of a hit that is a region: its box of the image, not the whole picture."""
    from vggfeat.montage import GAP, draw_montage

    picture = np.zeros((100, 200, 3), dtype=np.uint8)
    picture[:, 100:] = 250  # the right half white, the left black
    Image.fromarray(picture).save(tmp_path / "a.png")
    draw_montage([tmp_path / "a.png"], [[(f"{tmp_path / 'a.png'}#xywh=100,0,100,100", 0.5)]], tmp_path / "m.png", tile=50)
    with Image.open(tmp_path / "m.png") as image:
        hit = np.asarray(image.convert("RGB"))[GAP : GAP + 50, 2 * GAP + 50 : 2 * GAP + 100]
    assert (hit > 240).all()  # the white box fills its cell


def test_a_file_whose_name_holds_the_fragment_is_an_image_of_its_own(tmp_path):
    """'#xywh=' in a file's own name, without a box after it, names no region: found in a folder,
    that file is described whole, under its name."""
    root = tmp_path / "images"
    root.mkdir()
    write_rgb(root / "odd#xywh=1,2,3,4.png", 120, 100, seed=1)
    code, _, err = run_main(["extract", root, tmp_path / "out.h5", *CHEAP])
    assert code == 0, err
    written = read_output(tmp_path / "out.h5")
    assert written["paths"] == ["odd#xywh=1,2,3,4.png"] and written["sizes"].tolist() == [[120, 100]]
