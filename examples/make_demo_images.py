"""Write a small labelled image set for the vggfeat demo: python examples/make_demo_images.py DIR

Three classes in first-level subfolders (the labels vggfeat reads), four images each, drawn with
Pillow and NumPy from a fixed seed, so every run writes the same files. JPEG and PNG, 300-500 px
sides, landscape and portrait. Two broken files show how failures are recorded and skipped:
a truncated JPEG and a text file named .jpg.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SEED = 1409_1556  # the paper's arXiv number
PER_CLASS = 4


def stripes(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    angle, period = rng.uniform(0, np.pi), rng.uniform(16, 48)
    wave = np.sin((x * np.cos(angle) + y * np.sin(angle)) * 2 * np.pi / period) > 0
    a, b = rng.integers(0, 256, (2, 3))
    return Image.fromarray(np.where(wave[..., None], a, b).astype(np.uint8))


def circles(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(180, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(8, 20))):
        cx, cy, r = rng.integers(0, width), rng.integers(0, height), rng.integers(15, 70)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(int(v) for v in rng.integers(0, 200, 3)))
    return image


def checkers(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    cell = int(rng.integers(20, 60))
    board = ((x // cell + y // cell) % 2).astype(bool)
    a, b = rng.integers(0, 256, (2, 3))
    return Image.fromarray(np.where(board[..., None], a, b).astype(np.uint8))


def main(out: Path) -> None:
    rng = np.random.default_rng(SEED)
    written = []
    for name, draw in (("stripes", stripes), ("circles", circles), ("checkers", checkers)):
        (out / name).mkdir(parents=True, exist_ok=True)
        for i in range(PER_CLASS):
            long, short = (int(v) for v in sorted(rng.integers(300, 501, 2), reverse=True))
            width, height = (long, short) if i % 2 == 0 else (short, long)  # landscape, portrait, ...
            pixels = np.asarray(draw(rng, width, height), dtype=np.int16)
            noise = rng.normal(0, 8, pixels.shape)  # a little sensor noise, seeded like the rest
            image = Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))
            path = out / name / f"{name}_{i}.{'jpg' if i < 2 else 'png'}"
            image.save(path, quality=90)  # PNG ignores quality
            written.append(f"{path}  {width}x{height}")

    # Broken on purpose: vggfeat lists these in /failed of the output and carries on.
    buffer = io.BytesIO()
    checkers(rng, 400, 300).save(buffer, "JPEG", quality=90)
    truncated = out / "checkers" / "broken_truncated.jpg"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 3])
    not_an_image = out / "circles" / "broken_not_an_image.jpg"
    not_an_image.write_text("This is a text file with a .jpg name.\n")
    written += [f"{truncated}  (truncated JPEG)", f"{not_an_image}  (text, not an image)"]

    print(f"wrote {len(written)} files to {out}:")
    print("\n".join(f"  {line}" for line in written))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} DIR")
    main(Path(sys.argv[1]))
