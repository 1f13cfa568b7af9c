"""The errors every command raises; each maps to an exit code of ../docs/design.md."""


class PatchBuildError(Exception):
    """Base class: a one-line message meant for the user."""

    exit_code = 1


class InputError(PatchBuildError):
    """Bad usage or bad input (not ELF, wrong machine, truncated, mismatched units): exit 2."""

    exit_code = 2


class Refused(PatchBuildError):
    """The change cannot be live-patched; `problems` holds (symbol, reason) pairs: exit 1."""

    exit_code = 1

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("; ".join(f"{s}: {r}" for s, r in self.problems))


class NoChange(PatchBuildError):
    """Nothing functional changed: exit 3."""

    exit_code = 3


class InternalError(PatchBuildError):
    """A bug of ours caught by a self-check (an output relocation that references the wrong thing): exit 4.
    Raised before anything is written: a wrong reference would make a patch that corrupts its target."""

    exit_code = 4

    def __str__(self) -> str:  # args stay the bare message: the error pickles across -j worker processes
        return f"internal error (a bug of patch-build): {self.args[0]}"
