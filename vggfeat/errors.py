"""The two kinds of trouble vggfeat reports instead of a traceback."""


class VggfeatError(Exception):
    """A problem with what the user asked for (arguments, files, configuration).

    The CLI prints the message on one line and exits with code 2.
    """


class ImageError(Exception):
    """One image cannot be used (corrupt, truncated, not an image, too small or too large).

    Extraction records the message under ``/failed`` and goes on with the next image.
    """
