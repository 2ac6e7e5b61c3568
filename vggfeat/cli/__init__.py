"""The ``vggfeat`` command: a thin layer of click commands over the Python API."""

from __future__ import annotations

import importlib
import sys
import warnings

import click

from .._version import __version__
from ..errors import VggfeatError, quiet_decoding_libraries
from .common import Terminated, printable, stopping_on_sigterm
from .decoder_warnings import DecoderWarnings, decoder_warnings_counted

# Each command: its module, its function and the first sentence of its help (for 'vggfeat --help';
# tests/test_commands.py checks it against the command). A command's module, and torch with it, is imported
# only when that command runs or shows its own help, so 'vggfeat --help' and 'vggfeat info' start at once.
COMMANDS = {
    "extract": ("extract", "extract",
                "Describe every image under IMAGES (or in --file-list) and write OUTPUT (.h5)."),
    "merge": ("merge", "merge", "Join the files of all N shards of one extraction (any order) into OUTPUT."),
    "stack": ("merge", "stack", "Stack the descriptors of the same images from two or more FILES side by side "
              "into OUTPUT."),
    "info": ("info", "info",
             "Show rows, dimension, classes, failures, provenance and whether FILE is complete."),
    "train-svm": ("svm", "train_svm",
                  "Train one-vs-rest linear SVMs on FEATURES (an HDF5 file from 'vggfeat extract') and write MODEL."),
    "predict": ("svm", "predict", "Score every row of FEATURES with MODEL; write OUTPUT: a CSV of path, predicted "
                "class(es), scores (and the images FEATURES could not describe, with the reason), or, named .h5, the "
                "scores in HDF5."),
    "evaluate": ("svm", "evaluate", "Score MODEL on the labelled rows of FEATURES: accuracy, mean class recall, "
                 "per-class AP, mAP."),
    "protocol": ("protocol", "protocol",
                 "The paper's evaluation protocols (Caltech-101/256 splits, VOC mAP of images or of persons' actions) "
                 "on descriptor files."),
    "describe": ("describe", "describe", "Per layer of each of MODELS: output shape, activations, weights, "
                 "multiply-adds, receptive field."),
    "classify": ("classify", "classify", "Classify every image under IMAGES (or in --file-list) into OUTPUT "
                 "(.csv): top-k ImageNet classes."),
    "whiten": ("retrieval", "whiten", "PCA-whitening of descriptors (learned, then applied by 'vggfeat index' "
               "and 'retrieval-eval')."),
    "index": ("retrieval", "index", "Index the descriptors of FEATURES into OUTPUT for 'vggfeat search' "
              "(inner product of unit vectors)."),
    "search": ("search", "search", "Search INDEX with query images (files or folders) or --queries; print or "
               "write ranked paths and scores."),
    "retrieval-eval": ("retrieval", "retrieval_eval", "mAP and recall@1/5/10 of FEATURES searched against itself (with --gt, mP@1/5/10 too)."),
    "export": ("retrieval", "export", "Write FEATURES as NumPy or Parquet files, or a posteriors file as CSV "
               "[default name: beside FEATURES]."),
}


class LazyGroup(click.Group):
    """A group whose commands are imported when asked for (click's documented lazy-loading pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, function, _ = COMMANDS[name]
        return getattr(importlib.import_module(f".{module}", __name__), function)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # The listing from the table, not from the commands: listing must not import them.
        limit = formatter.width - 6 - max(map(len, COMMANDS))
        rows = [(name, click.Command(name, help=help).get_short_help_str(limit)) for name, (_, _, help) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="vggfeat")
def cli() -> None:
    """Very deep VGG descriptors without fine-tuning (Simonyan & Zisserman, 2014), in HDF5.

    \b
    vggfeat extract ./images out.h5        # VGG16 fc7, Q = 256,384,512, flips: the paper's descriptor
    vggfeat info out.h5                    # what a file holds, and how far a run got
    vggfeat train-svm out.h5 model.h5      # linear SVMs on the class folders' labels
    vggfeat predict model.h5 new.h5 p.csv  # scores and predicted classes

    'vggfeat COMMAND --help' tells more of each.
    """


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every user error ends in one ``Error:`` line and exit code 2, an error of the
    system (OSError) in one line and exit code 1."""
    files = _hdf5_files()
    files_before = files.open_hdf5_files() if files else set()
    decoders = DecoderWarnings()
    try:
        args = sys.argv[1:] if argv is None else list(argv)
        # The arguments travel in ctx.obj so that files record the command actually given.
        with stopping_on_sigterm(), warnings.catch_warnings(), decoder_warnings_counted(decoders):
            warnings.showwarning = _show_warning
            quiet_decoding_libraries()
            code = cli.main(args=args, prog_name="vggfeat", standalone_mode=False, obj={"argv": args})
    except click.exceptions.NoArgsIsHelpError as error:  # 'vggfeat' or 'vggfeat whiten' alone: the help, as click shows it
        click.echo(error.format_message(), err=True)
        sys.exit(error.exit_code)
    except BaseException as error:
        failure = _failure(error)
        if failure is None:
            raise
        message, code = failure
        _say_decoder_warnings(decoders)
        click.secho(f"Error: {printable(message)}", err=True, fg="red")
        # Here, while the error holds the failed command's objects: an HDF5 file that a full disk
        # kept from closing crashes the process when they are freed, or as it exits (h5py issue 914).
        # Only in the process of a command (argv from sys.argv), not in a caller's (tests, say).
        files = _hdf5_files()
        if files and code == 1 and argv is None:
            files.exit_if_hdf5_files_open(but=files_before, code=code)
        sys.exit(code)
    _say_decoder_warnings(decoders)
    sys.exit(code if isinstance(code, int) else 0)


def _failure(error: BaseException) -> tuple[str, int] | None:
    """The line and the exit code that ``error`` ends the command with; None for an exit, and for
    a bug, whose traceback is what a report needs."""
    if isinstance(error, VggfeatError):
        return str(error), 2
    if isinstance(error, click.UsageError):
        hint = f" (see '{error.ctx.command_path} --help')" if error.ctx else ""
        return error.format_message() + hint, 2
    if isinstance(error, click.ClickException):
        return error.format_message(), error.exit_code
    if isinstance(error, click.Abort) and isinstance(error.__cause__, Terminated):  # click makes a stop an abort
        error = error.__cause__
    if isinstance(error, Terminated):
        return "terminated", 143
    if isinstance(error, (KeyboardInterrupt, click.Abort)):
        return "interrupted", 130
    if isinstance(error, (OSError, RuntimeError)):  # the system's refusal (a full disk, a file that cannot be written)
        files = _hdf5_files()
        refusal = files.system_error(error) if files else None  # HDF5's, as "[Errno 28] No space left on device: 'x.h5'"
        if refusal is not None or (isinstance(error, OSError) and not _raised_in_h5py(error)):
            return str(refusal or error), 1
    if isinstance(error, (KeyError, RuntimeError, OSError)) and _raised_in_h5py(error):
        # HDF5 refusing its own structures as a file is read (a flipped bit, a bad copy), which
        # the readers that open a file check but the later reads of a part of it do not; an
        # OSError of h5py's that is no refusal of the system's ("Can't synchronously read data").
        reason = _hdf5_files().refusal_reason(error)  # h5py raised it: imported
        return f"HDF5 cannot read a file given ({reason}): is it damaged? 'vggfeat info FILE' reads each", 1
    return None


def _raised_in_h5py(error: BaseException) -> bool:
    """Whether ``error`` came from h5py's own code (its last frame), not from vggfeat's."""
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and str(frame.tb_frame.f_globals.get("__name__", "")).startswith("h5py")


def _hdf5_files():
    """:mod:`vggfeat.files`, where a command has imported h5py (not for --help, say); else None."""
    if "h5py" not in sys.modules:
        return None
    from .. import files

    return files


def _say_decoder_warnings(decoders: DecoderWarnings) -> None:
    for line in decoders.summary():
        _show_warning(line, UserWarning)


def _show_warning(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> None:
    """A warning as one line for the terminal: what happened, not where in the code it was said."""
    click.secho(f"warning: {printable(str(message))}", err=True, fg="yellow")
