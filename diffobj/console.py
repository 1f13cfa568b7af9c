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
