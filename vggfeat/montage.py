"""Montage: one PNG with each query and its top hits, the score under each hit.

One row per query: the query (framed) in the first column, then its hits in rank order. Every cell
is ``tile`` x ``tile`` with the picture fitted inside it (aspect kept), and a caption band below
with the file name and, for hits, the score. A hit whose file cannot be read gets a grey cell, so
the picture is always drawn and its size depends only on the number of queries and hits.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .decode import decode_image
from .errors import ImageError, VggfeatError
from .regions import crop, file_and_region
from .files import written_atomically

CAPTION = 28  # px: two lines of PIL's default font
GAP = 6
QUERY_FRAME = (40, 110, 220)
QUERY_BOX = (250, 200, 0)  # the box of the query that was searched for (search --box)
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
UNREADABLE = (200, 200, 200)  # the cell of a file that cannot be read
# 300 MB of RGB in memory: a tile of 100,000 px asked for 270 GB, and the process was killed.
MAX_PIXELS = 100_000_000


def montage_size(rows: int, columns: int, tile: int) -> tuple[int, int]:
    """(width, height) in pixels of a montage of ``rows`` queries with ``columns`` cells each (query + hits)."""
    return GAP + columns * (tile + GAP), GAP + rows * (tile + CAPTION + GAP)


def check_montage_size(rows: int, columns: int, tile: int) -> tuple[int, int]:
    """:func:`montage_size`, refused where it is over :data:`MAX_PIXELS`."""
    width, height = montage_size(rows, columns, tile)
    if width * height > MAX_PIXELS:
        raise VggfeatError(f"a montage of {width:,} x {height:,} px is over {MAX_PIXELS // 10**6} Mpx: a smaller tile, "
                           "or fewer queries or hits, draws one")
    return width, height


def draw_montage(
    queries: Sequence[str | os.PathLike],
    hits: Sequence[Sequence[tuple[str | os.PathLike, float]]],
    output: str | os.PathLike,
    tile: int = 160,
    query_boxes: Sequence[Sequence[float] | None] | None = None,
    unreadable: list[str] | None = None,
) -> tuple[int, int]:
    """Draw ``queries`` (image files) and their ``hits`` ((image file, score) best first) into ``output`` (PNG).

    ``query_boxes``: for each query, None or the box [x1, y1, x2, y2] (in its image's pixels) that
    was searched for, outlined on the query's picture. ``unreadable``: where given, the files drawn
    as grey cells are added to it. Returns the (width, height) written, :func:`montage_size` of the
    queries and the most hits; one over :data:`MAX_PIXELS` is refused before it is drawn.
    """
    if len(queries) != len(hits):
        raise ValueError(f"{len(queries)} queries but {len(hits)} lists of hits")
    query_boxes = query_boxes or [None] * len(queries)
    columns = 1 + max((len(h) for h in hits), default=0)
    width, height = check_montage_size(len(queries), columns, tile)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for row, (query, row_hits, box) in enumerate(zip(queries, hits, query_boxes)):
        top = GAP + row * (tile + CAPTION + GAP)
        cells = [(query, "query")] + [(path, f"{score:.3f}") for path, score in row_hits]
        for column, (path, label) in enumerate(cells):
            left = GAP + column * (tile + GAP)
            placed = _paste(canvas, path, left, top, tile)
            if placed is None and unreadable is not None:
                unreadable.append(str(path))
            if column == 0:
                draw.rectangle([left - 2, top - 2, left + tile + 1, top + tile + 1], outline=QUERY_FRAME, width=2)
                if box is not None and placed is not None:
                    scale, x, y = placed
                    draw.rectangle([x + box[0] * scale, y + box[1] * scale, x + box[2] * scale - 1, y + box[3] * scale - 1],
                                   outline=QUERY_BOX, width=2)
            name = _fit("/".join(Path(path).parts[-2:]), draw, font, tile)  # its folder too: cat/3.jpg, dog/3.jpg
            draw.text((left, top + tile + 2), name, fill=TEXT, font=font)
            draw.text((left, top + tile + 14), label, fill=QUERY_FRAME if column == 0 else TEXT, font=font)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    with written_atomically(output) as temporary:
        canvas.save(temporary, format="PNG")
    return width, height


def _paste(canvas: Image.Image, path: str | os.PathLike, left: int, top: int, tile: int) -> tuple[float, int, int] | None:
    """The picture of ``path`` (a region's: the box of its image) fitted into its cell; its scale
    and where its top-left corner went (None: unreadable, a grey cell)."""
    try:
        file, region = file_and_region(path)
        pixels = decode_image(Path(file), min_side=1)
        picture = Image.fromarray(pixels if region is None else crop(pixels, region, min_side=1))
    except (ImageError, OSError, ValueError):
        canvas.paste(UNREADABLE, (left, top, left + tile, top + tile))
        return None
    width = picture.width
    picture.thumbnail((tile, tile), Image.Resampling.LANCZOS)
    # Centred in its cell.
    x, y = left + (tile - picture.width) // 2, top + (tile - picture.height) // 2
    canvas.paste(picture, (x, y))
    return picture.width / width, x, y


def _fit(text: str, draw: ImageDraw.ImageDraw, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> str:
    """``text``, cut short with "..." where it is wider than ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."

