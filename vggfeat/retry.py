"""Retry: describe again the images that a finished extraction recorded as failed, and rewrite its
file with those that now succeed (the storage was away for a while; files were repaired since).

An update of the file (:class:`~vggfeat.update.OutputUpdate`) that describes its failed images:
checked to be the file that the same options and the same image set make, resumed where it was
killed, and replacing the old file only once the new one is whole.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .discover import ImageSet
from .extractor import Extractor
from .update import OutputUpdate


@dataclass(frozen=True)
class RetryResult:
    output: Path
    retried: int  # images described again
    recovered: int  # of those, the ones that are rows now
    rows: int
    failed: int
    seconds: float


def retry_failed(
    extractor: Extractor,
    images: ImageSet,
    output: str | os.PathLike,
    *,
    dtype: str = "float32",
    shard: tuple[int, int] | None = None,
    provenance: dict | None = None,
    progress: Callable[[int], None] | None = None,
) -> RetryResult:
    """Describe again the images in ``output``'s ``/failed`` and rewrite ``output`` with them.

    ``extractor``, ``images``, ``dtype`` and ``shard`` must be those that made ``output``; ``progress(n)``
    after each chunk of images described.
    """
    images = images.shard(*shard) if shard else images
    update = OutputUpdate(extractor, images, output, describe="failed", dtype=dtype, provenance=provenance)
    result = update.run(progress)
    # Every failure of the file was described again: those left are the images that failed again.
    return RetryResult(result.output, result.described, result.described - result.failed, result.rows, result.failed,
                       result.seconds)
