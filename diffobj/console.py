"""What every console script shares: one-line errors, exit codes, no tracebacks."""
from __future__ import annotations

import contextlib
import os
import sys
import traceback

import typer

from diffobj.errors import PatchBuildError


def error(prog: str, message: str) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr)


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
    except KeyboardInterrupt:
        error(prog, "interrupted")
        raise typer.Exit(130) from None
    except Exception as e:  # a bug of ours: still one line, unless asked for the details
        if os.environ.get("PATCH_BUILD_DEBUG"):
            traceback.print_exc()
        error(prog, f"internal error: {type(e).__name__}: {e} (set PATCH_BUILD_DEBUG=1 for details)")
        raise typer.Exit(1) from None


def _click_exceptions():
    """Click's exception module as Typer uses it: recent Typer vendors its own copy of click."""
    try:
        from typer._click import exceptions
    except ImportError:
        from click import exceptions
    return exceptions


def entry_point(app: typer.Typer, prog: str):
    """A console-script entry point for `app` whose usage errors are one line with exit code 2."""

    def main() -> None:
        exc = _click_exceptions()
        command = typer.main.get_command(app)
        try:
            code = command.main(prog_name=prog, standalone_mode=False)
        except exc.UsageError as e:
            error(prog, f"{e.format_message()} (see {prog} --help)")
            sys.exit(2)
        except typer.Abort:
            error(prog, "interrupted")
            sys.exit(130)
        except exc.ClickException as e:
            error(prog, e.format_message())
            sys.exit(e.exit_code)
        sys.exit(code if isinstance(code, int) else 0)

    return main
