"""The decoding libraries' warnings of damaged files, which name no file, are kept off the
terminal: libjpeg's are counted and said once at the end of a command (everything else on standard
error still reaches the terminal), Pillow's of damaged EXIF blocks are not shown."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from imagefiles import write_bomb_png, write_damaged_exif, write_damaged_jpeg, write_damaged_tiff, write_rgb, write_tiff_of_45_samples
from runhelpers import FAST, command, read_output, run_main
from vggfeat.cli import decoder_warnings
from vggfeat.cli.decoder_warnings import DecoderWarnings, decoder_warnings_counted
from vggfeat.jpeg import batch_decoder, read_jpeg

needs_batch_decoder = pytest.mark.skipif(batch_decoder() is None, reason="neither TorchCodec nor torchvision decodes JPEGs here")


def test_the_warnings_are_counted_and_all_else_passes_on(capfd):
    counted = DecoderWarnings()
    with decoder_warnings_counted(counted):
        os.write(2, b"Corrupt JPEG data: 28 extraneous bytes before marker 0xd9\n")
        os.write(2, b"a library's own message\n")
        # A process started meanwhile writes to the same pipe: its warnings are counted as well.
        subprocess.run([sys.executable, "-c", "import os; os.write(2, b'Premature end of JPEG file\\n'); "
                        "os.write(2, b'the child speaks\\n')"], check=True)
        os.write(2, b"LZMAError: Corrupt input data\n")  # a Python error's last line (a process's traceback): passed on
        os.write(2, b" 50%|#####     |\r")  # another process's progress bar, a line ended by a carriage return
        os.write(2, b"Corrupt JPEG data: bad Huffman code\n")
        os.write(2, b"Continue? ")  # a line not yet ended is not held back
        os.write(2, b"Corrupt JPEG data: bad Huffman code\n")
        os.write(2, b"tempfile.tif: Using code not yet in table.\n")  # libtiff's, by Pillow
        os.write(2, b"TIFFFillStrip: Invalid strip byte count 0, strip 0.\n")
        os.write(2, b"LZWDecode: Not enough data at scanline 0 (short 1 bytes).\n")
    err = capfd.readouterr().err
    assert "a library's own message\n" in err and "the child speaks\n" in err and "LZMAError: Corrupt input data\n" in err
    assert " 50%|#####     |" in err and err.endswith("Continue? ")
    assert "Corrupt JPEG" not in err and "Premature end" not in err and "tempfile.tif" not in err
    assert counted.counts == {"libjpeg": 4, "libtiff": 3}
    assert counted.first["libjpeg"] == "Corrupt JPEG data: 28 extraneous bytes before marker 0xd9"
    jpeg, tiff = counted.summary()
    assert jpeg.startswith(f"libjpeg warned of damaged JPEG data 4 times (the first: '{counted.first['libjpeg']}')")
    assert tiff.startswith("libtiff reported damaged TIFF data 3 times (the first: 'tempfile.tif: Using code not yet in table.')")
    os.write(2, b"Corrupt JPEG data: bad Huffman code\n")  # after the command: descriptor 2 is the terminal again
    assert capfd.readouterr().err == "Corrupt JPEG data: bad Huffman code\n"
    assert counted.counts == {"libjpeg": 4, "libtiff": 3}


def test_the_lines_before_the_commands_end_are_out_before_it_goes_on(capfd, monkeypatch):
    """The reader said the end was reached as it read the end's marker, before it had written the
    lines read with it: the command's last lines on standard error (a decoding process's) came
    after its own last words, or were lost as the process exited; and a loaded machine (the
    whole test suite beside another) did so by itself."""
    write = decoder_warnings._write

    def write_late(terminal: int, data: bytes) -> None:
        time.sleep(0.3)
        write(terminal, data)

    monkeypatch.setattr(decoder_warnings, "_write", write_late)
    with decoder_warnings_counted(DecoderWarnings()):
        os.write(2, b"the last line of a decoding process\n")
    assert capfd.readouterr().err == "the last line of a decoding process\n"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="C's standard error by its glibc/musl name")
def test_a_c_librarys_message_written_in_pieces_reaches_the_pipe_as_one_line():
    """libtiff writes "module: ", the message and ".\n" apart: several decoding processes sharing the
    pipe interleaved them, and a piece passed the filter ("Using code not yet in table.")."""
    code = ("import ctypes, os; from vggfeat.errors import quiet_decoding_libraries; quiet_decoding_libraries(); "
            "libc = ctypes.CDLL(None); stderr = ctypes.c_void_p.in_dll(libc, 'stderr'); "
            "libc.fprintf(stderr, b'LZWDecode: '); os.write(2, b'[another process]'); libc.fprintf(stderr, b'Not enough data.\\n')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert result.stderr == b"[another process]LZWDecode: Not enough data.\n"


@needs_batch_decoder
def test_the_decoding_librarys_own_warning_is_recognised(tmp_path, capfd):
    write_damaged_jpeg(tmp_path / "damaged.jpg")
    jpeg = read_jpeg(tmp_path / "damaged.jpg", max_pixels=10**8, min_side=1)
    assert jpeg is not None  # it goes to TorchCodec or torchvision, whose libjpeg warns
    counted = DecoderWarnings()
    with decoder_warnings_counted(counted):
        pixels = batch_decoder()([jpeg.data], device=torch.device("cpu"))[0]
    assert pixels.shape == (3, 64, 96)
    assert counted.counts == {"libjpeg": 1} and counted.first["libjpeg"].startswith("Corrupt JPEG data: ")
    assert "Corrupt JPEG" not in capfd.readouterr().err


@needs_batch_decoder
def test_extract_describes_damaged_jpegs_and_says_so_once_at_the_end(tmp_path, capfd):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        write_damaged_jpeg(images / f"damaged{i}.jpg", seed=i)
    write_rgb(images / "whole.jpg", 64, 96, fmt="JPEG")
    code, _, err = run_main(["extract", images, tmp_path / "out.h5", *FAST, "--layer", "conv1_1", "--decoder", "torchvision"])
    assert code == 0, err
    assert "Corrupt JPEG" not in capfd.readouterr().err  # nothing from libjpeg reached the terminal
    out = read_output(tmp_path / "out.h5")
    assert len(out["paths"]) == 4 and not out["failed_paths"]
    last = err.strip().splitlines()[-1]
    assert last.startswith("warning: libjpeg warned of damaged JPEG data 3 times (the first: 'Corrupt JPEG data: ")
    # The junk lies after the image's data: the descriptors are those of the same JPEG without it.
    (tmp_path / "clean").mkdir()
    write_rgb(tmp_path / "clean" / "damaged0.jpg", 64, 96, seed=0, fmt="JPEG")
    code, _, err = run_main(["extract", tmp_path / "clean", tmp_path / "clean.h5", *FAST, "--layer", "conv1_1"])
    assert code == 0 and "libjpeg" not in err
    np.testing.assert_array_equal(read_output(tmp_path / "clean.h5")["features"][0], out["features"][0])


def test_libtiffs_messages_are_counted_and_the_damaged_tiff_recorded(tmp_path, capfd):
    (tmp_path / "images").mkdir()
    write_damaged_tiff(tmp_path / "images" / "damaged.tif")
    write_rgb(tmp_path / "images" / "whole.png", 40, 56)
    code, _, err = run_main(["extract", tmp_path / "images", tmp_path / "out.h5", *FAST, "--layer", "conv1_1", "--min-side", "8"])
    assert code == 0, err
    assert "tempfile.tif" not in capfd.readouterr().err
    out = read_output(tmp_path / "out.h5")
    assert out["paths"] == ["whole.png"] and out["failed_paths"] == ["damaged.tif"]
    assert out["failed_errors"] == ["damaged image data (Pillow's decoder error -2: decoding error)"]
    assert err.strip().splitlines()[-1] == ("warning: libtiff reported damaged TIFF data once (the first: 'tempfile.tif: "
                                            "Using code not yet in table.'); the files it could not decode are recorded as failed")


def test_pillows_log_records_of_files_it_refuses_are_not_shown(tmp_path):
    """Logging's last resort printed Pillow's error record (naming no file) to the terminal."""
    (tmp_path / "images").mkdir()
    write_tiff_of_45_samples(tmp_path / "images" / "odd.tif")
    write_rgb(tmp_path / "images" / "whole.png", 40, 56)
    result = subprocess.run(command(["extract", tmp_path / "images", tmp_path / "out.h5", *FAST, "--layer", "conv1_1",
                                     "--min-side", "8", "--quiet"]), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "samples per pixel" not in result.stderr.replace("failed: odd.tif", "")
    out = read_output(tmp_path / "out.h5")
    assert out["failed_paths"] == ["odd.tif"] and out["failed_errors"] == ["not an image, or a format Pillow cannot read"]


@pytest.mark.parametrize("decode_in", ["threads", "processes"])
def test_pillows_warnings_of_damaged_exif_blocks_are_not_shown(tmp_path, capfd, decode_in):
    (tmp_path / "images").mkdir()
    upright = write_damaged_exif(tmp_path / "images" / "damaged.jpg")
    code, _, err = run_main(["extract", tmp_path / "images", tmp_path / "out.h5", *FAST, "--layer", "conv1_1",
                             "--decode-in", decode_in])
    assert code == 0, err
    assert "EXIF" not in err + capfd.readouterr().err
    out = read_output(tmp_path / "out.h5")
    assert out["paths"] == ["damaged.jpg"] and out["sizes"].tolist() == [list(upright.shape[:2])]


@pytest.mark.parametrize("decode_in", ["threads", "processes"])
def test_pillows_decompression_bomb_warning_is_not_shown(tmp_path, capfd, decode_in):
    """Over Pillow's limit but under twice it, Pillow warns ("could be decompression bomb DOS
    attack", naming no file) and vggfeat refuses the image, naming it: only the refusal is said."""
    (tmp_path / "images").mkdir()
    write_bomb_png(tmp_path / "images" / "bomb.png", side=14000)  # 196 M pixels
    write_rgb(tmp_path / "images" / "whole.png", 40, 56)
    code, _, err = run_main(["extract", tmp_path / "images", tmp_path / "out.h5", *FAST, "--layer", "conv1_1",
                             "--min-side", "8", "--decode-in", decode_in])
    assert code == 0, err
    assert "decompression bomb DOS" not in err + capfd.readouterr().err
    out = read_output(tmp_path / "out.h5")
    assert out["failed_paths"] == ["bomb.png"] and out["failed_errors"][0].startswith("image is 14000x14000 (196,000,000 pixels), over")
