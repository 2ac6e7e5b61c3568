"""Damaged inputs and odd options, many at a time: a script for developers (not a test that CI runs), that looks for
the bad input which still ends a command in a traceback, hangs it, or gives other pixels by one
decoder than by another. Each finding becomes a test of its own.

    python tests/fuzz_inputs.py jpeg-routes --count 3000   # TorchCodec/torchvision's route against Pillow's, headers mutated
    python tests/fuzz_inputs.py archives --count 3000      # archives' tables from mutated tar files: a table, or a tar error
    python tests/fuzz_inputs.py formats --count 3000       # PNG, GIF, BMP, TIFF, WebP, AVIF, JPEG 2000, HEIF mutated: pixels or a reason
    python tests/fuzz_inputs.py hdf5 --count 80 -- info FILE  # a command on a descriptor file with bytes changed
    python tests/fuzz_inputs.py hdf5 --source model -- predict FILE SOURCE output.csv  # on a damaged SVM model
    python tests/fuzz_inputs.py options --count 600        # extract with options drawn at random, sound and not
    python tests/fuzz_inputs.py commands --count 1500      # the other commands so, on sound files
    python tests/fuzz_inputs.py kills --count 100          # extract killed at a random moment, then run again

Every kind prints what it found and a count; the files stay under --workdir to reproduce them.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from imagefiles import write_rgb  # noqa: E402
from runhelpers import assert_same_output, command, read_output, run_main  # noqa: E402
from vggfeat.archives import read_table  # noqa: E402
from vggfeat.decode import decode_image  # noqa: E402
from vggfeat.errors import ImageError, VggfeatError  # noqa: E402
from vggfeat.reading import Budget, ImageReader, Reduced  # noqa: E402


def mutated(data: bytes, rng: random.Random, within: int, changes: int = 3) -> bytes:
    """``data`` with up to ``changes`` bytes changed, mostly in its first ``within`` bytes, and
    cut short one time in five."""
    data = bytearray(data)
    for _ in range(rng.randint(1, changes)):
        at = rng.randrange(min(len(data), within)) if rng.random() < 0.8 else rng.randrange(len(data))
        data[at] = rng.choice([rng.randrange(256), 0, 1, 6, 0xFF, ord("-"), ord("9")])
    return bytes(data[: rng.randrange(1, len(data))] if rng.random() < 0.2 else data)


def jpeg_routes(count: int, rng: random.Random, workdir: Path) -> int:
    """JPEGs (EXIF orientations, gray, progressive) with their headers mutated, decoded by the
    batched decoder's route and by Pillow's: the same pixels, or both refuse."""
    picture = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    sources = []
    for orientation in (1, 3, 6, 8):
        exif = Image.Exif()
        exif[0x0112] = orientation
        sources.append(_encoded(Image.fromarray(picture), exif=exif.tobytes()))
    sources += [_encoded(Image.fromarray(picture).convert("L")), _encoded(Image.fromarray(picture), progressive=True)]
    readers = [ImageReader(torch.device("cpu"), decoder, 1, 10**8, 16) for decoder in ("torchvision", "pil")]
    found = 0
    for number in range(count):
        source = rng.choice(sources)
        path = workdir / f"{number:05d}.jpg"
        path.write_bytes(mutated(source, rng, source.find(b"\xff\xda"), changes=3))
        batched, pillow = (_pixels(reader, path) for reader in readers)
        if isinstance(batched, str) != isinstance(pillow, str) or (
                not isinstance(batched, str) and not np.array_equal(batched, pillow)):
            found += 1
            print(f"{path}: {_shown(batched)} by the batched route, {_shown(pillow)} by Pillow's")
    return found


def _encoded(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, **options)
    return buffer.getvalue()


def _pixels(reader: ImageReader, path: Path) -> np.ndarray | str:
    """(H, W, 3) pixels of ``path`` as ``reader`` decodes it, or the reason it fails."""
    result = reader._decode_group([path], 0, Budget(None))[0][0]
    if isinstance(result, ImageError):
        return str(result)
    pixels = result.pixels if isinstance(result, Reduced) else result
    pixels = pixels.numpy() if isinstance(pixels, torch.Tensor) else pixels
    return pixels.transpose(1, 2, 0) if pixels.shape[0] == 3 and pixels.shape[-1] != 3 else pixels


def _shown(outcome: np.ndarray | str) -> str:
    return f"'{outcome}'" if isinstance(outcome, str) else f"pixels {outcome.shape}"


def formats(count: int, rng: random.Random, workdir: Path) -> int:
    """Images of the other formats vggfeat reads (by Pillow and its plugins), mutated anywhere: each
    decodes within 20 s to pixels or to an ImageError (a failure recorded for that image), never to
    another exception, which would be the run's."""
    sources, found = _image_sources(), 0
    for number in range(count):
        path = _mutated_source(sources, rng, workdir / f"{number:05d}")
        problem = _problem(lambda: _decoded_or_error(path), seconds=20)
        if problem is not None:
            found += 1
            print(f"{path}: {problem}")
    return found


def _mutated_source(sources: dict[str, bytes], rng: random.Random, stem: Path) -> Path:
    """One of ``sources`` (by suffix) with up to 4 bytes changed anywhere, written to ``stem`` + its suffix."""
    suffix = rng.choice(list(sources))
    path = stem.with_name(stem.name + suffix)
    path.write_bytes(mutated(sources[suffix], rng, len(sources[suffix]), changes=4))
    return path


def _problem(check: Callable[[], Exception | None], seconds: float) -> str | None:
    """What went wrong in ``check``, run in a thread of its own (a hang must not stop the fuzzing):
    it did not end in ``seconds``, or the exception it returned; None where it returned None."""
    outcome: list = []
    thread = threading.Thread(target=lambda: outcome.append(check()), daemon=True)
    thread.start()
    thread.join(seconds)
    if not outcome:
        return f"did not end in {seconds} s"
    return None if outcome[0] is None else f"raised {outcome[0]!r}"


def _image_sources() -> dict[str, bytes]:
    """A small picture encoded in each format vggfeat reads by Pillow that this Pillow writes, by suffix."""
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8))
    sources = {}
    for suffix, options in [(".png", {}), (".gif", {}), (".bmp", {}), (".tif", {"compression": "tiff_lzw"}),
                            (".tiff", {}), (".webp", {}), (".avif", {}), (".jp2", {}), (".heic", {})]:
        buffer = io.BytesIO()
        try:
            if suffix == ".heic":
                import pillow_heif

                pillow_heif.register_heif_opener()
            picture.save(buffer, Image.registered_extensions()[suffix], **options)
        except (KeyError, OSError, ImportError) as error:  # a format this Pillow cannot write
            print(f"{suffix}: not fuzzed ({error})")
            continue
        sources[suffix] = buffer.getvalue()
    return sources


def extract(count: int, rng: random.Random, workdir: Path, args: list[str], in_tar: bool) -> int:
    """``vggfeat extract`` (plus ARGS: --decode-in processes, --decoder pil, ...) in a process of
    its own over ``count`` images of every format, JPEGs most, a byte or a few changed in each (in a
    tar archive, ``in_tar``): it ends with exit 0, every image a row or a failure, and no traceback
    or decoder's line on its standard error."""
    picture = np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    jpegs = [_encoded(Image.fromarray(picture)), _encoded(Image.fromarray(picture), progressive=True),
             _encoded(Image.fromarray(picture), exif=exif.tobytes())]
    sources = list(_image_sources().items()) + [(".jpg", jpeg) for jpeg in jpegs] * 3
    images = workdir / "images"
    images.mkdir(exist_ok=True)
    for old in images.iterdir():
        old.unlink()
    with contextlib.ExitStack() as stack:
        tar = stack.enter_context(tarfile.open(images / "shard.tar", "w")) if in_tar else None
        for number in range(count):
            suffix, data = rng.choice(sources)
            data = mutated(data, rng, len(data), changes=3)
            if tar is None:
                (images / f"{number:05d}{suffix}").write_bytes(data)
            else:
                member = tarfile.TarInfo(f"{number:05d}{suffix}")
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
    output = workdir / "out.h5"
    result = subprocess.run(command(["extract", images, output, "--weights", "random", "--model", "vgg11", "--layer",
                                     "conv1_1", "--scales", "224", "--no-flip", "--min-side", "8", "--device", "cpu",
                                     "--overwrite", "--quiet", *args]), capture_output=True, timeout=1800)
    err = result.stderr.decode("utf-8", "replace")
    problems = [f"exit {result.returncode}"] if result.returncode != 0 else []
    problems += [f"said {line!r}" for line in err.splitlines()  # --quiet: warnings alone
                 if not line.startswith(("warning: ", "WARNING: random weights"))]
    if result.returncode == 0:
        out = read_output(output)
        if len(out["paths"]) + len(out["failed_paths"]) != count:
            problems.append(f"{len(out['paths'])} rows and {len(out['failed_paths'])} failures of {count} images")
    print(err.strip()[-2000:])
    for problem in problems:
        print(f"{images}: {problem}")
    return len(problems)


def _decoded_or_error(path: Path) -> Exception | None:
    """None where ``path`` decodes, or fails as an image does (ImageError); else what it raised."""
    try:
        decode_image(path)
    except Exception as error:  # noqa: BLE001 - what this looks for
        return None if isinstance(error, ImageError) else error
    return None


def weights(count: int, rng: random.Random, workdir: Path) -> int:
    """Weights files as --weights takes them (torch.save's zip of a state dict, its legacy format,
    .safetensors) with bytes changed: each is refused within 20 s with a VggfeatError (the line a
    command ends in), never another exception. The tensors are VGG11's names at a tiny size: the
    file's structures, not its numbers, are what is damaged (a sound file is refused as not fitting)."""
    from safetensors.torch import save_file

    from vggfeat.weights import load_vgg

    names = torchvision.models.vgg11(weights=None).state_dict().keys()
    state_dict = {name: torch.full((2,), float(i)) for i, name in enumerate(names)}
    sources = {}
    for suffix, save in [(".pth", lambda path: torch.save(state_dict, path)),
                         (".pt", lambda path: torch.save(state_dict, path, _use_new_zipfile_serialization=False)),
                         (".safetensors", lambda path: save_file(state_dict, str(path)))]:
        save(workdir / f"sound{suffix}")
        sources[suffix] = (workdir / f"sound{suffix}").read_bytes()
    found = 0
    for number in range(count):
        path = _mutated_source(sources, rng, workdir / f"{number:05d}")
        problem = _problem(lambda: _refusal_or_error(lambda: load_vgg("vgg11", path)), seconds=20)
        if problem is not None:
            found += 1
            print(f"{path}: {problem}")
    return found


def _refusal_or_error(load: Callable[[], object], loads: bool = False) -> Exception | None:
    """None where ``load`` is refused with a VggfeatError (or, ``loads``, does not raise); else what
    it raised, or a note that it loaded."""
    try:
        load()
    except VggfeatError:
        return None
    except Exception as error:  # noqa: BLE001 - what this looks for
        return error
    return None if loads else AssertionError("loaded: tiny tensors should not fit VGG11")


def texts(count: int, rng: random.Random, workdir: Path) -> int:
    """The text files a user hands in, with characters that parsers trip on put in, taken out or
    changed (quotes, commas, line ends, '#', brackets, bytes that are not UTF-8): each parser reads
    them or refuses them with a VggfeatError within 10 s, never another exception."""
    from vggfeat.discover import read_file_list
    from vggfeat.labels import read_labels_csv
    from vggfeat.predictions import read_labels
    from vggfeat.retrieval import read_ground_truth
    from vggfeat.voc import read_image_set

    for name in ("a.jpg", "b.jpg", "sub/c.jpg", "b, c.jpg"):
        (workdir / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        write_rgb(workdir / "images" / name, 16, 16)
    devkit, oxford = workdir / "VOC2007", workdir / "oxford"
    (devkit / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (devkit / "ImageSets" / "Main" / "train.txt").write_text("000001\n000002\n000003\n")
    oxford.mkdir(exist_ok=True)
    for kind, text in [("good", "a\nb\n"), ("ok", "c\n"), ("junk", "d\n")]:
        (oxford / f"all_souls_1_{kind}.txt").write_text(text)
    kinds = {  # the file each is read from, its sound text, how it is read
        "labels": ("labels.csv", 'path,label\na.jpg,cat\n"b, c.jpg",dog;cat\nsub/c.jpg#xywh=1,2,3,4,cat\n', read_labels_csv),
        "imagenet list": ("val.txt", "a.jpg 3\nb.jpg,4\n# a comment\nsub/c.jpg 999\n", read_labels),
        "file list": ("images/list.txt", "a.jpg\nb.jpg,cat\nsub/c.jpg#xywh=0,0,8,8,dog\nb, c.jpg\n", read_file_list),
        "VOC set": ("VOC2007/ImageSets/Main/aeroplane_train.txt", "000001  1\n000002 -1\n000003  0\n",
                    lambda path: read_image_set(devkit, "train")),
        "ground truth": ("gt.json", '[{"query": "a.jpg", "ok": ["b.jpg"], "junk": [], "bbox": [1, 2, 30.5, 40]}, '
                                    '{"query": "b.jpg", "ok": ["a.jpg"], "junk": ["sub/c.jpg"]}]', read_ground_truth),
        "revisited": ("gnd.json", '{"imlist": ["a", "b"], "qimlist": ["q"], "gnd": [{"easy": [0], "hard": [1], "junk": [], '
                                  '"bbx": [1, 2, 3, 4]}]}', lambda path: read_ground_truth(path, "medium")),
        "Oxford query": ("oxford/all_souls_1_query.txt", "oxc1_all_souls_000013 136.5 34.1 648.5 955.7\n",
                         lambda path: read_ground_truth(path.parent)),
    }
    tricky = [b'"', b",", b"\n", b"\r", b"#", b" ", b"\t", b";", b"[", b"]", b"{", b"}", b"-", b"9", b"0", b".", b"\xff",
              b"\xc3", b"e", b"xywh=", b"nan", b"1e999", b"\\"]
    found = 0
    for number in range(count):
        kind = rng.choice(list(kinds))
        name, sound, read = kinds[kind]
        data = bytearray(sound.encode())
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(data) + 1)
            what = rng.random()
            if what < 0.4:
                data[at:at] = rng.choice(tricky)
            elif what < 0.7:
                del data[at : at + rng.randint(1, 3)]
            else:
                data[at : at + 1] = rng.choice(tricky)
        path = workdir / name
        path.write_bytes(bytes(data))
        problem = _problem(lambda: _refusal_or_error(lambda: read(path), loads=True), seconds=10)
        if problem is not None:
            found += 1
            kept = workdir / f"{number:05d}-{Path(name).name}"
            kept.write_bytes(bytes(data))
            print(f"{kind} {kept}: {problem}")
    return found


def archives(count: int, rng: random.Random, workdir: Path) -> int:
    """Tar archives (PAX, GNU, ustar; long names) with their headers mutated: each table read
    within 10 s gives members of sound places, or a tar error; then a run over one of them in ten
    ends without a traceback."""
    payloads = [bytes(rng.randrange(256) for _ in range(rng.randint(10, 1500))) for _ in range(4)]
    found = 0
    for number in range(count):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=rng.choice([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])) as tar:
            for i, payload in enumerate(payloads):
                info = tarfile.TarInfo("long/" * rng.randint(0, 30) + f"{i}.jpg")
                info.size, info.mtime = len(payload), 1.5e9 + rng.random()  # a fraction: a PAX record
                tar.addfile(info, io.BytesIO(payload))
        path = workdir / f"{number:05d}.tar"
        path.write_bytes(mutated(buffer.getvalue(), rng, 3072, changes=6))
        outcome: list = []
        reader = threading.Thread(target=lambda: outcome.append(_table_or_error(path)), daemon=True)
        reader.start()
        reader.join(10)
        problem = ("did not end in 10 s" if not outcome else
                   f"raised {outcome[0]!r}" if isinstance(outcome[0], Exception) else
                   f"gave a negative place {outcome[0]}" if any(min(place) < 0 for place in outcome[0].values()) else None)
        if problem is None and number % 10 == 0:
            problem = _run_ends_cleanly(path, workdir)
        if problem is not None:
            found += 1
            print(f"{path}: {problem}")
    return found


def _table_or_error(path: Path) -> dict | Exception | None:
    try:
        return read_table(str(path))
    except (tarfile.TarError, OSError):
        return {}
    except Exception as error:  # noqa: BLE001 - what this looks for
        return error


def _run_ends_cleanly(archive: Path, workdir: Path) -> str | None:
    folder = workdir / archive.stem
    folder.mkdir(exist_ok=True)
    (folder / "shard.tar").write_bytes(archive.read_bytes())
    output = workdir / f"{archive.stem}.h5"
    code, _, err = run_main(["extract", folder, output, "--weights", "random", "--model", "vgg11", "--layer", "conv1_1",
                             "--scales", "224", "--no-flip", "--min-side", "8", "--device", "cpu", "--quiet"])
    if code not in (0, 2) or "Traceback" in err:
        return f"extract ended with {code}: {err[-300:]}"
    if code == 0 and len(read_output(output)["paths"]) > len(read_table(str(folder / "shard.tar"))):
        return "more rows than members"
    return None


# How each kind of file --source names is made, from the descriptor file SOURCE (its 6 images labelled).
SOURCES = {
    "features": None,
    "model": ["train-svm", "SOURCE", "FILE", "--C", "1"],
    "whitening": ["whiten", "fit", "SOURCE", "FILE"],
    "index": ["index", "SOURCE", "FILE"],
    "hnsw": ["index", "SOURCE", "FILE", "--kind", "hnsw"],  # FAISS's bytes
    "scores": ["predict", "MODEL", "SOURCE", "FILE"],
    "posteriors": ["classify", "IMAGES", "FILE", "--weights", "random", "--model", "vgg11", "--scales", "224", "--min-side", "8",
                   "--device", "cpu", "--quiet"],
}


def hdf5(count: int, rng: random.Random, workdir: Path, args: list[str], source_kind: str) -> int:
    """``vggfeat ARGS`` (FILE: a file of kind ``source_kind`` from 6 images, up to 8 bytes changed;
    SOURCE: their sound descriptor file; MODEL: a sound SVM model of them; IMAGES: their folder),
    each in a process of its own: exit 0, 1 or 2 in one line, never a traceback. A crash of HDF5
    itself (a negative exit code) is counted apart: vggfeat cannot mend it."""
    images = workdir / "images"
    for i in range(6):
        folder = images / ("cats" if i % 2 else "dogs")
        folder.mkdir(parents=True, exist_ok=True)
        write_rgb(folder / f"{i}.png", 40, 40, seed=i)
    names = {"SOURCE": str(workdir / "source.h5"), "MODEL": str(workdir / "model.h5"), "IMAGES": str(images)}
    made = [["extract", images, names["SOURCE"], "--weights", "random", "--model", "vgg11", "--layer", "conv1_1",
             "--scales", "224", "--min-side", "8", "--device", "cpu", "--quiet", "--overwrite"],
            ["train-svm", names["SOURCE"], names["MODEL"], "--C", "1", "--overwrite"]]
    sound = workdir / f"sound-{source_kind}.h5"
    sound.unlink(missing_ok=True)
    made.append(SOURCES[source_kind] and [str(sound) if arg == "FILE" else names.get(arg, arg) for arg in SOURCES[source_kind]])
    for arguments in filter(None, made):
        code, _, err = run_main(arguments)
        assert code == 0, err
    data, found, exits = Path(names["SOURCE"] if source_kind == "features" else sound).read_bytes(), 0, collections.Counter()
    for number in range(count):
        path = workdir / f"{number:05d}.h5"
        path.write_bytes(mutated(data, rng, len(data), changes=8))
        for written in workdir.glob("output*"):  # what the last command wrote
            written.unlink()
        arguments = [str(path) if arg == "FILE" else names.get(arg, arg) for arg in args]
        result = subprocess.run(command(arguments), capture_output=True, cwd=workdir, timeout=300)
        err = result.stderr.decode("utf-8", "replace")
        exits[result.returncode] += 1
        if result.returncode >= 0 and (result.returncode not in (0, 1, 2) or "Traceback" in err):
            found += 1
            print(f"{path}: exit {result.returncode}: {err[-400:]}")
        elif number < 3 or result.returncode == 1:  # what a run says (the arguments meant what they were meant
            # to); and each exit 1, the system's error, which a damaged file should not give
            print(f"{path}: exit {result.returncode}: {err.strip()[-200:]}")
    print(f"exit codes (negative: HDF5 itself crashed, which vggfeat cannot mend): {dict(sorted(exits.items()))}")
    return found


# Each option of ``extract`` with the sound values it is tried with (a flag: None), and values it
# must refuse in one line. An option is given one time in four, a value to refuse in one run of four.
EXTRACT_OPTIONS: dict[str, list[str | None]] = {
    "--model": ["vgg11", "vgg11_bn", "vgg11,vgg13", "vgg11,vgg11"],
    "--weights": ["random", "random,random"],
    "--seed": ["1", "4294967295"],
    "--layer": ["fc7", "fc6", "fc8", "pool5", "conv5_2", "conv1_1", "pool1", "conv3_1"],
    "--pooling": ["avg", "max", "gem", "rmac", "mac", "spoc"],
    "--scales": ["224", "32", "32,64", "64,32", "224,240", "48"],
    "--resize-side": ["short", "long"],
    "--center-crop": [None],
    "--aggregate": ["mean", "stack", "gem"],
    "--gem-p": ["3", "0.5", "1e-6", "30", "1e9"],
    "--normalize": ["auto", "none", "l2"],
    "--no-flip": [None],
    "--flip": [None],
    "--device": ["cpu", "cpu,cpu"],
    "--precision": ["auto", "fp32", "tf32", "bf16", "fp16"],
    "--dtype": ["float32", "float16"],
    "--batch-size": ["auto", "1", "3", "100000"],
    "--workers": ["1", "2", "64"],
    "--decoder": ["auto", "pil", "torchvision"],
    "--decode-in": ["auto", "threads", "processes"],
    "--jpeg-draft": [None],
    "--max-pixels": ["1", "2000", "100000000"],
    "--min-side": ["1", "8", "50", "100000"],
    "--cudnn-autotune": ["auto", "off"],
    "--compile": ["auto", "off"],
    "--shard": ["1/2", "2/2", "1/1", "1/100"],
    "--part-size": ["1", "2", "4096"],
    "--file-list": ["LIST", "REGIONS", "MISSING"],
    "--root": ["IMAGES", "ELSEWHERE"],
}
EXTRACT_REFUSED: dict[str, list[str]] = {
    "--seed": ["-1", "99999999999999999999"], "--model": ["vgg12", "vgg11,", ""], "--weights": ["missing.pth", "random,"],
    "--layer": ["conv9_9", "fc7,fc6", ""], "--scales": ["0", "abc", ",", "32,32", "48,", "31"], "--gem-p": ["nan", "inf", "0", "-1"],
    "--device": ["cuda", "cuda:3", "tpu", "cpu,"], "--batch-size": ["0", "-1", "x"], "--workers": ["0"],
    "--decoder": ["nvjpeg", "nvimgcodec"], "--shard": ["3/2", "0/1", "x"], "--part-size": ["0"], "--file-list": ["-"],
    "--cudnn-autotune": ["on"],  # on the CPU
}


def extract_options(count: int, rng: random.Random, workdir: Path) -> int:
    """``vggfeat extract`` with options drawn at random from :data:`EXTRACT_OPTIONS` and
    :data:`EXTRACT_REFUSED` (and the images as a folder, a tar archive or a list), in this process,
    each run on the output of the last (or none), the images changed between runs one time in two
    (added, removed, rewritten, a damaged one mended): it ends in exit 0 with every image a row or
    a failure and finite descriptors, or in one ``Error:`` line (exit 1 or 2), never in a
    traceback; and ``--update`` gives the file that a run anew gives."""
    images = workdir / "images"
    for folder in ("cats", "dogs"):
        (images / folder).mkdir(parents=True, exist_ok=True)
    for i, (height, width) in enumerate([(40, 52), (52, 40), (36, 300), (64, 64), (33, 33)]):
        write_rgb(images / ("cats" if i % 2 else "dogs") / f"{i}.{'jpg' if i % 3 else 'png'}", height, width, seed=i)
    (images / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    lists = _image_sources_of(images, workdir)
    found, last = 0, None
    for number in range(count):
        arguments, listed = ["--quiet"], None
        refused = rng.choice(list(EXTRACT_REFUSED)) if rng.random() < 1 / 4 else None
        for option, values in EXTRACT_OPTIONS.items():
            if option == refused or rng.random() < 1 / 4:
                value = rng.choice(EXTRACT_REFUSED[option] if option == refused else values)
                if option == "--file-list":
                    listed = value
                    value = str(lists[value][0]) if value in lists else value
                elif option == "--root":
                    value = str(images if value == "IMAGES" else workdir)
                arguments += [option] if value is None else [option, value]
        if "--gem-p" in arguments and "gem" not in arguments and refused != "--gem-p":  # it goes with gem, or is refused
            arguments += ["--aggregate", "gem"]
        arguments = ["--weights", "random", "--model", "vgg11", "--device", "cpu", "--scales", "224", "--layer", "conv1_1",
                     *arguments]
        source = None if listed else rng.choice([images, workdir / "images.tar"])
        output = workdir / "out.h5"
        # On the last run's output; "" runs again without a flag (done, or refused saying what differs).
        rewrite = rng.choice([None, None, "--overwrite", "--retry-failed", "--update", ""])
        if rewrite is None:
            shutil.rmtree(workdir / "out.h5.parts", ignore_errors=True)
            output.unlink(missing_ok=True)
            last = None  # the command that wrote the output
        argv = ["extract", *([source] if source else []), output, *arguments]
        if rewrite in ("--update", "--retry-failed", "") and last and rng.random() < 0.7:
            argv, arguments, listed = last  # the command that made the output, as these are meant to be run
        started = time.monotonic()
        try:
            code, out, err = run_main([*argv, *[rewrite] * bool(rewrite)])
        except BaseException as error:  # noqa: BLE001 - what this looks for
            found += 1
            print(f"{number}: vggfeat {' '.join(map(str, argv))} {rewrite or ''}\n  raised {error!r}")
            continue
        problems = []
        lines = [line for line in err.splitlines() if line.strip()]
        if code not in (0, 1, 2):
            problems.append(f"exit {code}")
        elif code and not (lines and lines[-1].startswith("Error: ")):
            problems.append("no Error: line at the end")
        elif code == 0 and "--shard" in arguments:
            last = None
        elif code == 0:
            last = argv, arguments, listed
            written = read_output(output)
            if len(written["paths"]) + len(written["failed_paths"]) != lists.get(listed, lists["IMAGES"])[1]:
                problems.append(f"{len(written['paths'])} rows, {len(written['failed_paths'])} failures of "
                                f"{lists.get(listed, lists['IMAGES'])[1]}")
            if not np.isfinite(written["features"]).all():
                problems.append("descriptors that are not finite")
            if rewrite == "--update":
                problems += _differences_from_anew(argv, output, written, workdir / "anew.h5")
        seconds = time.monotonic() - started
        if seconds > 120:
            problems.append(f"took {seconds:.0f} s")
        shown = lines[-1][:160] if lines else ""
        print(f"{number}: exit {code} {seconds:.1f}s {' '.join(map(str, argv))} {rewrite or ''}\n    {shown}")
        for problem in problems:
            found += 1
            print(f"  PROBLEM: {problem}\n  {err[-1500:]}")
        if rng.random() < 1 / 2:
            print(f"    images: {_change_images(images, rng, number)}")
            lists = _image_sources_of(images, workdir)
    return found


def _image_sources_of(images: Path, workdir: Path) -> dict[str, tuple[Path, int]]:
    """The images under ``images`` also as a tar archive and as lists (by --file-list's values in
    :data:`EXTRACT_OPTIONS`; IMAGES: the folder): each one's file and the rows it gives."""
    paths = sorted(p.relative_to(images).as_posix() for p in images.rglob("*.*"))
    with tarfile.open(workdir / "images.tar", "w") as tar:
        for name in paths:
            tar.add(images / name, name)
    lists = {"LIST": (workdir / "list.txt", "\n".join(paths) + "\n", len(paths)),
             "REGIONS": (workdir / "regions.txt", "".join(f"{p}#xywh=2,3,30,30\n{p}\n" for p in paths), 2 * len(paths)),
             "MISSING": (workdir / "missing.txt", "gone.jpg\n" + paths[0] + "\n", 2)}
    for path, text, _ in lists.values():
        path.write_text(text)
    return {"IMAGES": (images, len(paths)), **{name: (path, rows) for name, (path, _, rows) in lists.items()}}


def _change_images(images: Path, rng: random.Random, number: int) -> str:
    """One change to the images under ``images``, in words: an image added, removed (three kept),
    rewritten with other pixels, or the damaged one mended or damaged again."""
    paths = sorted(images.rglob("*.*"))
    change = rng.choice(["added", "removed", "rewritten", "broken"])
    if change == "removed" and len(paths) > 3:
        path = rng.choice([p for p in paths if p.name != "broken.jpg"])
        path.unlink()
    elif change == "rewritten":
        path = rng.choice(paths)
        write_rgb(path.with_suffix(".png") if path.name == "broken.jpg" else path, 48, 44 + number % 20, seed=1000 + number)
    elif change == "broken":
        path = images / "dogs" / "broken.jpg"
        if rng.random() < 0.5:
            write_rgb(path, 40, 40, seed=number)
        else:
            path.write_bytes(b"\xff\xd8\xff not a jpeg")
    else:
        change, path = "added", images / rng.choice(["cats", "dogs"]) / f"new{number}.png"
        write_rgb(path, 38 + number % 30, 50, seed=number)
    return f"{path.relative_to(images)} {change}"


def _differences_from_anew(argv: list, output: Path, updated: dict, anew: Path) -> list[str]:
    """How the file that ``extract --update`` wrote into ``output`` (``updated``: read_output's)
    differs from the one ``argv`` writes anew into ``anew``: other rows, failures or labels, descriptors beyond the tolerance of
    batches made otherwise (of bf16's and float16's rounding, looser)."""
    code, _, err = run_main([anew if arg == output else arg for arg in argv] + ["--overwrite"])
    if code != 0:
        return [f"the run anew exited {code}: {err.strip()[-300:]}"]
    fresh = read_output(anew)
    problems = [f"{key} differ from a run anew's" for key in ("paths", "labels", "classes", "failed_paths", "failed_labels")
                if not np.array_equal(updated[key], fresh[key])]
    if not problems and updated["features"].shape != fresh["features"].shape:
        problems.append(f"descriptors {updated['features'].shape}, {fresh['features'].shape} anew")
    elif not problems and fresh["features"].size:
        loose = "bf16" in argv or "float16" in argv
        scale = max(float(np.abs(fresh["features"]).max()), 1e-12)
        worst = float(np.abs(updated["features"].astype(np.float64) - fresh["features"]).max()) / scale
        if worst > (2e-2 if loose else 1e-4):
            problems.append(f"descriptors differ from a run anew's by up to {worst:.2g} of the largest")
    return problems


# The SVM options that train-svm and protocol caltech share.
SVM_OPTIONS: dict[str, list[str | None]] = {
    "--C": ["1", "1e-9", "1e9"], "--C-grid": ["0.1,1", "1", "1,1", "x", "0", "1e300", ""], "--cv": ["2", "3", "50", "1"],
    "--loss": ["hinge", "squared_hinge"], "--class-weight": ["balanced", "none"], "--no-normalize": [None],
    "--max-iter": ["1", "2000"], "--n-jobs": ["1", "2", "16"], "--solver": ["liblinear", "lbfgs"],
    "--device": ["cpu", "auto", "cuda"], "--seed": ["3"], "--exclude-class": ["cats", "nope", "birds"],
}
# Each other command: its arguments (upper case: the sound files that commands() makes; OUT.x: a
# new file) and its options with the values they are tried with, sound or not.
COMMAND_OPTIONS: dict[str, tuple[list[str], dict[str, list[str | None]]]] = {
    "train-svm": (["FEATURES", "OUT.h5"], {**SVM_OPTIONS, "--features": ["OTHER"], "--labels": ["LABELS", "MULTI"],
                                             "--multilabel": [None], "--overwrite": [None]}),
    "predict": (["MODEL", "FEATURES", "OUT.csv"], {"--features": ["OTHER", "FEATURES"], "--overwrite": [None]}),
    "predict ": (["MODEL", "OTHER", "OUT.h5"], {"--overwrite": [None]}),
    "evaluate": (["MODEL", "FEATURES"], {"--features": ["OTHER"], "--labels": ["LABELS", "MULTI"], "--report": ["OUT.d"],
                                         "--overwrite": [None]}),
    "index": (["FEATURES", "OUT.h5"], {"--whiten": ["WHITENING"], "--kind": ["flat", "ivfpq", "hnsw"],
                                       "--nlist": ["1", "2", "1000"], "--pq-m": ["1", "8", "3", "64", "128"],
                                       "--nprobe": ["1", "1000"], "--hnsw-m": ["2", "64"], "--ef-search": ["1"],
                                       "--update": [None], "--overwrite": [None]}),
    "search": (["INDEX", "QUERY"], {"--queries": ["FEATURES", "OTHER"], "--box": ["1,1,20,20", "0,0,0,0", "5,5,1,1", "1,2,3"],
                                    "-k": ["1", "100"], "--qe": ["0", "3", "50"], "--montage": ["OUT.png"],
                                    "--montage-hits": ["1", "30"], "--montage-queries": ["1"], "--tile": ["32", "300"],
                                    "--root": ["IMAGES", "OUT.d"], "--backend": ["auto", "faiss", "numpy"],
                                    "--device": ["cpu"], "--batch-size": ["1", "auto"], "--workers": ["1"],
                                    "--overwrite": [None]}),
    "search ": (["INDEX", "OUT.json"], {"--queries": ["FEATURES", "OTHER"], "-k": ["1", "100"], "--qe": ["2"],
                                        "--overwrite": [None]}),
    "export": (["FEATURES"], {"--to": ["npy", "parquet", "csv"], "--topk": ["1", "1000"], "--labels": ["folders", "LABELS"],
                              "--fuse": ["FEATURES"], "--overwrite": [None]}),
    "export ": (["FEATURES", "OUT.npy"], {"--to": ["npy", "parquet", "csv"], "--overwrite": [None]}),
    "whiten fit": (["FEATURES", "OUT.h5"], {"--dim": ["1", "32", "64", "1000"], "--overwrite": [None]}),
    "retrieval-eval": (["FEATURES"], {"--whiten": ["WHITENING"], "--qe": ["0", "2", "100"], "--json": ["OUT.json"],
                                      "--gt": ["GROUND_TRUTH"], "--queries": ["OTHER", "FEATURES"], "--overwrite": [None]}),
    "stack": (["FEATURES", "OTHER", "OUT.h5"], {"--overwrite": [None]}),
    "stack ": (["FEATURES", "FEATURES", "OUT.h5"], {}),
    "merge": (["SHARD1", "SHARD2", "OUT.h5"], {"--overwrite": [None]}),
    "merge ": (["SHARD2", "OUT.h5"], {}),
    "info": (["FEATURES"], {"--json": [None]}),
    "info ": (["MODEL"], {"--json": [None]}),
    "info  ": (["POSTERIORS"], {"--json": [None]}),
    "export  ": (["POSTERIORS", "OUT.csv"], {"--topk": ["1", "3", "1000"], "--labels": ["folders", "LABELS"],
                                            "--fuse": ["POSTERIORS", "FEATURES"], "--overwrite": [None]}),
    "classify": (["IMAGES", "OUT.csv"], {"--model": ["vgg11", "vgg11,vgg13"], "--weights": ["random"], "--seed": ["1"],
                                         "--scales": ["224", "224,256"], "--no-flip": [None], "--no-dense": [None],
                                         "--topk": ["1", "5", "2000"], "--labels": ["LABELS"],
                                         "--device": ["cpu", "cpu,cpu"], "--batch-size": ["1", "auto"],
                                         "--min-side": ["1", "45"], "--shard": ["1/2"], "--part-size": ["1", "4096"],
                                         "--overwrite": [None], "--retry-failed": [None], "--update": [None]}),
    "classify ": (["IMAGES", "OUT.h5"], {"--model": ["vgg11"], "--weights": ["random"], "--scales": ["224"],
                                         "--no-flip": [None], "--topk": ["1", "5"], "--device": ["cpu"]}),
    "describe": (["vgg11"], {"--size": ["224", "384x512", "31", "0", "x", "100000"], "--json": [None],
                             "--markdown": [None], "--compare": [None], "--kernels": ["5,7", "1", "x", "4"],
                             "--channels": ["1", "64"]}),
    "describe ": (["vgg16_c", "vgg11_lrn"], {"--size": ["224", "32x5000"], "--json": [None]}),
    "protocol caltech": (["FEATURES"], {**SVM_OPTIONS, "--train-per-class": ["1", "2", "30"],
                                        "--test-per-class": ["0", "1", "50"], "--splits": ["1", "2"],
                                        "--json": ["OUT.json"], "--overwrite": [None]}),
}


def commands(count: int, rng: random.Random, workdir: Path) -> int:
    """The commands besides ``extract`` (:data:`COMMAND_OPTIONS`), with options drawn at random, on
    sound files of 13 images in 3 classes (one failed), in this process: exit 0, or one ``Error:``
    line (exit 1 or 2), never a traceback; each run's outputs kept for the next one time in three."""
    images = workdir / "images"
    for i in range(12):
        folder = images / ("cats", "dogs", "birds")[i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        write_rgb(folder / f"{i}.png", 40 + i, 48, seed=i)
    (images / "cats" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    files = {name: str(workdir / f"{name.lower()}.h5") for name in ("FEATURES", "OTHER", "SHARD1", "SHARD2", "MODEL",
                                                                     "INDEX", "WHITENING", "POSTERIORS")}
    files.update(IMAGES=str(images), QUERY=str(images / "dogs" / "1.png"), LABELS=str(workdir / "labels.csv"),
                 MULTI=str(workdir / "multi.csv"), GROUND_TRUTH=str(workdir / "gt.json"))
    paths = sorted(p.relative_to(images).as_posix() for p in images.rglob("*.png"))
    Path(files["LABELS"]).write_text("path,label\n" + "".join(f"{p},{p.split('/')[0]}\n" for p in paths[:9]))
    Path(files["MULTI"]).write_text("path,label\n" + "".join(f"{p},{p.split('/')[0]};{'cats' if i % 2 else 'big'}\n"
                                                                 for i, p in enumerate(paths)))
    Path(files["GROUND_TRUTH"]).write_text(json.dumps([{"query": paths[0], "ok": paths[1:3], "junk": [paths[3]]},
                                                       {"query": paths[4], "ok": [paths[7]], "junk": []}]))
    network = ["--weights", "random", "--model", "vgg11", "--scales", "32", "--device", "cpu", "--quiet", "--overwrite"]
    for arguments in (["extract", images, files["FEATURES"], *network, "--layer", "conv1_1"],
                      ["extract", images, files["OTHER"], *network, "--layer", "conv2_1"],
                      ["extract", images, files["SHARD1"], *network, "--layer", "conv1_1", "--shard", "1/2"],
                      ["extract", images, files["SHARD2"], *network, "--layer", "conv1_1", "--shard", "2/2"],
                      ["train-svm", files["FEATURES"], files["MODEL"], "--C", "1", "--overwrite", "--quiet"],
                      ["whiten", "fit", files["FEATURES"], files["WHITENING"], "--overwrite", "--quiet"],
                      ["index", files["FEATURES"], files["INDEX"], "--overwrite", "--quiet"],
                      ["classify", images, files["POSTERIORS"], "--weights", "random", "--model", "vgg11", "--scales", "224",
                       "--no-flip", "--device", "cpu", "--quiet", "--overwrite"]):
        code, _, err = run_main(arguments)
        assert code == 0, err
    outputs = workdir / "outputs"
    found = 0
    for number in range(count):
        name = rng.choice(list(COMMAND_OPTIONS))
        positional, table = COMMAND_OPTIONS[name]
        if rng.random() < 2 / 3:
            shutil.rmtree(outputs, ignore_errors=True)
        outputs.mkdir(exist_ok=True)

        def given(value: str | None) -> list[str]:
            if value is None:
                return []
            return [str(outputs / value)] if value.startswith("OUT.") else [files.get(value, value)]

        argv = [*name.split(), *[arg for value in positional for arg in given(value)]]
        for option, values in table.items():
            if rng.random() < 1 / 3:
                argv += [option, *given(rng.choice(values))]
        try:
            code, out, err = run_main(argv)
        except BaseException as error:  # noqa: BLE001 - what this looks for
            found += 1
            print(f"{number}: vggfeat {' '.join(argv)}\n  raised {error!r}")
            continue
        lines = [line for line in err.splitlines() if line.strip()]
        print(f"{number}: exit {code} vggfeat {' '.join(argv)}\n    {lines[-1][:200] if lines else ''}")
        if code not in (0, 1, 2) or (code and not (lines and lines[-1].startswith("Error: "))):
            found += 1
            print(f"  PROBLEM: exit {code}\n  {err[-1500:]}")
    return found


# The runs that kills() interrupts: extract's options (IMAGES and OUTPUT put first), and whether
# the run is an --update of a file made before a few images were added.
KILLED_RUNS: dict[str, tuple[list[str], bool]] = {
    "threads": ([], False),
    "processes": (["--decode-in", "processes", "--workers", "2"], False),
    "two devices": (["--device", "cpu,cpu"], False),
    "float16": (["--dtype", "float16", "--part-size", "1"], False),
    "update": ([], True),
    "update on two devices": (["--device", "cpu,cpu"], True),
}


def kills(count: int, rng: random.Random, workdir: Path) -> int:
    """``vggfeat extract`` (:data:`KILLED_RUNS`) in a process of its own, killed (SIGKILL, or
    SIGTERM as a scheduler stops a job) at a moment drawn at random, then the same command run to
    its end: it exits 0 and writes the file an uninterrupted run writes (rows, descriptors,
    failures), leaving no work folder behind and no process of the killed run running."""
    images = workdir / "images"
    shutil.rmtree(images, ignore_errors=True)
    for i in range(36):
        folder = images / ("cats", "dogs", "birds")[i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        write_rgb(folder / f"{i:02d}.{'png' if i % 2 else 'jpg'}", 40 + i % 7, 56, seed=i)
    (images / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    added = [images / "cats" / f"new{i}.png" for i in range(6)]
    cheap = ["--weights", "random", "--model", "vgg11", "--layer", "conv1_1", "--scales", "64", "--device", "cpu",
             "--part-size", "4", "--quiet"]
    expected, durations, found = {}, {}, 0
    for name, (options, update) in KILLED_RUNS.items():  # what an uninterrupted run writes, and how long it takes
        for path in added:
            path.unlink(missing_ok=True) if update else write_rgb(path, 44, 50, seed=99)
        reference = workdir / f"reference-{name}.h5"
        started = time.monotonic()
        result = subprocess.run(command(["extract", images, reference, *cheap, *options, "--overwrite"]),
                                capture_output=True, timeout=600)
        assert result.returncode == 0, result.stderr.decode()
        durations[name] = time.monotonic() - started
        if update:  # the file before the images were added kept, then brought up to date
            shutil.copy(reference, workdir / f"base-{name}.h5")
            for path in added:
                write_rgb(path, 44, 50, seed=99)
            result = subprocess.run(command(["extract", images, reference, *cheap, *options, "--update"]),
                                    capture_output=True, timeout=600)
            assert result.returncode == 0, result.stderr.decode()
        expected[name] = read_output(reference)
    for number in range(count):
        name = rng.choice(list(KILLED_RUNS))
        options, update = KILLED_RUNS[name]
        output = workdir / "out.h5"
        for path in (output, workdir / "out.h5.parts", workdir / "out.h5.shards"):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        argv = ["extract", images, output, *cheap, *options]
        for path in added:
            path.unlink(missing_ok=True) if update else write_rgb(path, 44, 50, seed=99)
        if update:
            shutil.copy(workdir / f"base-{name}.h5", output)  # as made before the images were added
            for path in added:
                write_rgb(path, 44, 50, seed=99)
            argv.append("--update")
        how = rng.choice([signal.SIGKILL, signal.SIGKILL, signal.SIGTERM])
        after = rng.uniform(0, durations[name] * 1.2)
        killed = subprocess.Popen(command(argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        time.sleep(after)
        killed.send_signal(how)
        _, err = killed.communicate(timeout=120)
        problems = []
        with contextlib.suppress(ProcessLookupError):
            for _ in range(40):  # the killed run's processes (decoding, devices') see it gone and stop
                os.killpg(killed.pid, 0)
                time.sleep(0.5)
            problems.append("processes of the killed run went on for 20 s")
            os.killpg(killed.pid, signal.SIGKILL)
        # Also after a run that ended before the signal came: the same command again has nothing to do.
        again = subprocess.run(command(argv), capture_output=True, text=True, timeout=600)
        if again.returncode != 0:
            problems.append(f"the same command again exited {again.returncode}: {again.stderr.strip()[-600:]}")
        else:
            try:
                assert_same_output(read_output(output), expected[name], atol=0)
            except AssertionError as error:
                problems.append(f"not the uninterrupted run's file: {str(error)[:600]}")
            left = [path.name for path in workdir.iterdir() if path.name.startswith("out.h5.")]
            if left:
                problems.append(f"left {left}")
        print(f"{number}: {name}, {how.name} after {after:.1f} s (exit {killed.returncode}): "
              f"{err.decode('utf-8', 'replace').strip().splitlines()[-1:] or ''}")
        for problem in problems:
            found += 1
            print(f"  PROBLEM: {problem}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["jpeg-routes", "archives", "formats", "weights", "texts", "extract", "hdf5", "options", "commands", "kills"])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("fuzz-inputs"))
    parser.add_argument("--source", choices=list(SOURCES), default="features", help="hdf5: the kind of file damaged")
    parser.add_argument("--in-tar", action="store_true", help="extract: the images in a tar archive")
    parser.epilog = ("extract: after --, options of the run. hdf5: after --, the command; FILE stands for the damaged "
                     "file, SOURCE for the sound descriptor file, MODEL for a sound model of it, IMAGES for their "
                     "folder; a file the command writes is best named output...")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    options = parser.parse_args(argv[:split])
    options.args = argv[split + 1 :]
    warnings.simplefilter("ignore", UserWarning)  # what damaged files are warned of: expected here, by the thousand
    workdir = options.workdir / options.kind
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(options.seed)
    if options.kind == "hdf5":
        if "FILE" not in options.args:
            raise VggfeatError("hdf5: give the command after --, with FILE for the damaged file: -- info FILE")
        found = hdf5(options.count, rng, workdir, options.args, options.source)
    elif options.kind == "extract":
        found = extract(options.count, rng, workdir, options.args, options.in_tar)
    else:
        found = {"jpeg-routes": jpeg_routes, "archives": archives, "formats": formats, "weights": weights,
                 "texts": texts, "options": extract_options, "commands": commands, "kills": kills}[options.kind](options.count, rng, workdir)
    print(f"{options.kind}: {found} of {options.count} found")


if __name__ == "__main__":
    main()
