"""What every console script shares: one-line errors, exit codes, no tracebacks."""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import traceback

import typer

from patch_build.common.errors import PatchBuildError
from patch_build.common.interrupts import HANDLED, Interrupted
from patch_build.common.messages import internal_error_message, printable

INTERNAL_ERROR = 4  # a bug of ours (docs/design.md, exit codes)


def error(prog: str, message: str) -> None:
    print(f"{prog}: error: {printable(message)}", file=sys.stderr)


@contextlib.contextmanager
def guarded(prog: str):
    """Turn any failure into `PROG: error: ...` and the design's exit code (2 for bad input)."""
    try:
        yield
    except (typer.Exit, typer.Abort, SystemExit):
        raise
    except PatchBuildError as e:
        error(prog, str(e))
        raise typer.Exit(e.exit_code) from None
    except Interrupted as e:
        _report(prog, e)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        error(prog, "interrupted")
        raise typer.Exit(130) from None
    except Exception as e:  # a bug of ours: still one line, unless asked for the details
        if os.environ.get("PATCH_BUILD_DEBUG"):
            traceback.print_exc()
        error(prog, internal_error_message(e))
        raise typer.Exit(INTERNAL_ERROR) from None


def _click_exceptions():
    """Click's exception module as Typer uses it: recent Typer vendors its own copy of click."""
    try:
        from typer._click import exceptions
    except ImportError:
        from click import exceptions
    return exceptions


def _report(prog: str, e: Interrupted) -> None:
    error(prog, f"interrupted by {e}")
    e.reported = True


def _version() -> str:
    from importlib.metadata import version

    return version("patch-build")  # the code runs only installed (its packages live under patch_build.*)


def command_app(help: str, **options) -> typer.Typer:
    """A Typer application as every console script builds it: plain help text (Typer's rich help imports
    rich's whole rendering stack, half the time of `--help`) and no pretty tracebacks (`guarded` prints one
    line instead)."""
    return typer.Typer(help=help, rich_markup_mode=None, pretty_exceptions_enable=False, **options)


def entry_point(app: typer.Typer, prog: str):
    """A console-script entry point for `app` whose usage errors are one line with exit code 2; `PROG
    --version` prints the version (shell completion: `PROG --install-completion`, from Typer)."""

    def main() -> None:
        try:
            code = _dispatch()
        except Interrupted as e:  # between the command's end and the line below
            _report(prog, e)
            code = e.exit_code
        # The command's outcome is settled and printed: a signal from here on changes nothing.
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        sys.exit(code)

    def _dispatch() -> int:
        if sys.argv[1:] == ["--version"]:
            print(f"{prog} {_version()}")
            return 0
        exc = _click_exceptions()
        command = typer.main.get_command(app)
        try:
            code = command.main(prog_name=prog, standalone_mode=False)
        except exc.UsageError as e:
            error(prog, f"{e.format_message()} (see {prog} --help)")
            return 2
        except typer.Abort:
            error(prog, "interrupted")
            return 130
        except exc.ClickException as e:
            error(prog, e.format_message())
            return e.exit_code
        late = Interrupted.last
        if late is not None and not late.reported:  # outside `guarded`, Typer made it a silent exit 130
            _report(prog, late)
            return late.exit_code
        return code if isinstance(code, int) else 0

    return main
