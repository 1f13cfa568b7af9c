"""The one-line messages of every command: text from untrusted files made safe to print, and an unexpected
exception named as the bug of ours it is (also in the report a build writes)."""
from __future__ import annotations

import contextlib

from patch_build.common.errors import PatchBuildError


def printable(text: str, keep: str = "") -> str:
    """`text` with control characters (from names in untrusted files) escaped, safe to print to a terminal;
    those in `keep` (a source line's tabs) stay."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in keep else repr(c)[1:-1] for c in text)


def internal_error_message(e: Exception) -> str:
    """The one line that says an exception is a bug of ours, and where to look."""
    return (f"internal error (a bug of patch-build): {type(e).__name__}: {e} "
            "(set PATCH_BUILD_DEBUG=1 for details)")


@contextlib.contextmanager
def internal_error_reported(write_report):
    """Call `write_report(message)` when an unexpected exception (a bug of ours) passes, then let it go on to
    `guarded`: the command's report says so too, with status "error" (issue 9)."""
    import typer  # loaded already by the command that runs this; not by one that does not

    try:
        yield
    except (PatchBuildError, typer.Exit, typer.Abort):  # click's Exit and Abort are RuntimeErrors
        raise
    except Exception as e:
        try:
            write_report(internal_error_message(e))
        except Exception as failed:  # the first error is the one to show; this one goes in its traceback
            e.add_note(f"writing the error report failed too: {type(failed).__name__}: {failed}")
        raise
