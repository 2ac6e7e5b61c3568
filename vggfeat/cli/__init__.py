"""The ``vggfeat`` command: a thin layer of click commands over the Python API."""

from __future__ import annotations

import sys
import warnings

import click

from .._version import __version__
from ..errors import VggfeatError
from .classify import classify
from .describe import describe
from .extract import extract
from .info import info
from .merge import merge
from .options import Terminated, stopping_on_sigterm
from .protocol import protocol
from .retrieval import export, index, retrieval_eval, search, whiten
from .svm import evaluate, predict, train_svm


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="vggfeat")
def cli() -> None:
    """Very deep VGG descriptors without fine-tuning (Simonyan & Zisserman, 2014), in HDF5."""


cli.add_command(extract)
cli.add_command(merge)
cli.add_command(info)
cli.add_command(train_svm)
cli.add_command(predict)
cli.add_command(evaluate)
cli.add_command(protocol)
cli.add_command(describe)
cli.add_command(classify)
cli.add_command(whiten)
cli.add_command(index)
cli.add_command(search)
cli.add_command(retrieval_eval)
cli.add_command(export)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every user error ends in one ``Error:`` line and exit code 2, an error of the
    system (OSError) in one line and exit code 1."""
    try:
        args = sys.argv[1:] if argv is None else list(argv)
        # The arguments travel in ctx.obj so that files record the command actually given.
        with stopping_on_sigterm(), warnings.catch_warnings():
            warnings.showwarning = _show_warning
            code = cli.main(args=args, prog_name="vggfeat", standalone_mode=False, obj={"argv": args})
    except VggfeatError as error:
        _fail(str(error), 2)
    except click.UsageError as error:
        hint = f" (see '{error.ctx.command_path} --help')" if error.ctx else ""
        _fail(error.format_message() + hint, 2)
    except click.ClickException as error:
        _fail(error.format_message(), error.exit_code)
    except Terminated:
        _fail("terminated", 143)
    except (KeyboardInterrupt, click.Abort):
        _fail("interrupted", 130)
    except OSError as error:  # the system's refusal (a full disk, a file that cannot be written): no traceback
        _fail(str(error), 1)
    sys.exit(code if isinstance(code, int) else 0)


def _show_warning(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> None:
    """A warning as one line for the terminal: what happened, not where in the code it was said."""
    click.secho(f"warning: {message}", err=True, fg="yellow")


def _fail(message: str, code: int) -> None:
    click.secho(f"Error: {message}", err=True, fg="red")
    sys.exit(code)
