"""``vggfeat extract``: images in, one HDF5 file of descriptors out."""

from __future__ import annotations

import click

from ..choices import DTYPES
from . import common, options


@click.command()
@options.image_source
@options.network
@click.option("--layer", help="fc7, fc6, pool5, a conv layer such as conv5_3, or fc8 (class scores) [default: fc7; conv5_3 for gem, rmac].")
@click.option("--pooling", default="avg", show_default=True, type=click.Choice(["avg", "max", "gem", "rmac", "mac", "spoc"]),
              help="Pooling of the dense map: avg (SPoC), max (MAC), gem (power mean), rmac (regional MAC); mac/spoc are aliases.")
@options.scales
@options.resize_side
@click.option("--center-crop", is_flag=True, help="Only the central 224x224 of each resized image: the fast setting (--scales 224 or 256).")
@click.option("--aggregate", default="mean", show_default=True, type=click.Choice(["mean", "stack", "gem"]),
              help="Average the scales, concatenate them, or take their power mean (--gem-p).")
@click.option("--gem-p", default=3.0, show_default=True, type=click.FloatRange(min=0, min_open=True), help="Power of gem pooling and gem aggregation.")
@click.option("--normalize", default="auto", show_default=True, type=click.Choice(["auto", "none", "l2"]),
              help="L2-normalise each view before combining, and the result (auto: for gem and rmac).")
@click.option("--flip/--no-flip", default=True, show_default=True, help="Average with the horizontally flipped image.")
@options.devices
@options.precision
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(DTYPES), help="Stored type of /features.")
@options.image_pipeline
@options.shard
@options.part_size
@common.overwrite
@options.retry_failed
@options.update
@common.quiet
def extract(paths, file_list, root, archive_classes, models, weights, seed, layer, pooling, scales, resize_side, center_crop, aggregate, gem_p, normalize, flip,
            devices, precision, dtype, batch_size, workers, decoder, decode_in, jpeg_draft, max_pixels, min_side, autotune, compile, shard, part_size, overwrite,
            retry_failed, update, quiet) -> None:
    """Describe every image under IMAGES (or in --file-list) and write OUTPUT (.h5).

    The defaults give the paper's descriptor: VGG16 fc7, applied densely at Q = 256, 384, 512,
    averaged over scales and horizontal flips. Class labels come from first-level subfolders.
    A killed run resumes where it stopped when the same command is run again.
    """
    # Imported here: torch comes with them, and the options above (--help, a typo) need none of it.
    from ..extractor import Extractor
    from ..fused import FusedExtractor
    from ..job import check_existing_output, check_output
    from ..processes import start_process_server
    from ..settings import check_scales, default_layer
    from ..update import check_rewritable
    from .jobs import write_output

    # As the command line is read (see options.parse_scales), but --scales alone knows no layer.
    check_scales(scales, default_layer(layer, pooling), center_crop)
    output = options.output_of(paths, file_list)
    rewrite = options.rewrite_of(overwrite, retry_failed, update, shard)
    weights_each = options.weights_of(models, weights)
    options.refuse_unused(weights_each, devices, decoder, autotune)
    common.refuse_without("--pooling gem or --aggregate gem", "gem" in (pooling, aggregate), "gem_p")
    # A center crop's fc map is one position: max pooling of it is avg's, which a file recording it
    # would not match. Refused for a new file; one made so before is updated as it was made.
    if center_crop and default_layer(layer, pooling).startswith("fc") and pooling in ("max", "mac") and not rewrite:
        raise click.UsageError(f"--pooling {pooling}: a center crop's {default_layer(layer, pooling)} map is one position, "
                               "nothing to pool; leave --pooling out")
    # What can be refused is refused before the images are found (minutes for millions of files on
    # a network file system): the output, whether IMAGES exists, the options (checked as the
    # network is built; its weights, if downloaded, stay in torchvision's cache) and whether an
    # existing output was made with them: for a retry or an update, which need it; otherwise, one
    # made from these images, which the same command may find done (the job tells, once they are found).
    if not rewrite:
        check_output(output, overwrite, options.images_root(paths, file_list, root))
    options.check_source(paths, file_list, archive_classes)
    if len(devices) > 1:  # a process per device to come
        start_process_server()
    say = common.reporter(quiet)
    say(f"loading {', '.join(models)} ({weights})")
    settings = dict(
        seed=seed, layer=layer, pooling=pooling, scales=scales, aggregate=aggregate, flip=flip, device=devices[0],
        precision=precision, batch_size=batch_size, workers=workers, decoder=decoder, decode_in=decode_in,
        jpeg_draft=jpeg_draft, max_pixels=max_pixels, min_side=min_side, autotune=autotune, compile=compile,
        resize_side=resize_side, center_crop=center_crop, gem_p=gem_p, normalize=normalize,
    )
    if len(models) > 1:
        extractor = FusedExtractor(models, weights=weights_each, **settings)
    else:
        extractor = Extractor(models[0], weights=weights, **settings)
    if extractor.random_weights:
        options.warn_random_weights(seed, "these descriptors are not ImageNet features (the file records "
                                          "random_weights=True)")
    if rewrite:
        check_rewritable(output, extractor, dtype, rewrite)
    else:
        check_existing_output(output, overwrite, extractor.config(), dtype)
    images = options.read_images(paths, file_list, root, archive_classes, quiet)
    if not rewrite:
        options.check_archive_classes(images, archive_classes)
    say(f"{common.images_counted(images)}, {common.counted(len(images.classes), 'class', 'classes')}")
    write_output(extractor, images, output, devices, shard=shard, rewrite=rewrite, dtype=dtype, part_size=part_size,
                 overwrite=overwrite, quiet=quiet, precision=precision,
                 desc=f"{'+'.join(models)} {extractor.layer} Q={','.join(map(str, scales))}")

