"""Names of references to the running original (docs/design.md, "References to the original").

A changed function that uses a local symbol of the target (or, in the kernel, an unexported global) reaches
it through an undefined symbol `PREFIX OBJ.NAME,POS`: OBJ the target object's name, NAME the symbol's name in
the original, POS its position among same-named symbols (0: unique). Kernel object names hold no dots; user
space ones may (`libfoo.so.1`), so they are told apart by the module's target names.
"""
from __future__ import annotations

from dataclasses import dataclass

KERNEL_PREFIX = ".klp.sym."  # the livepatch core's own scheme
USER_PREFIX = ".kpatch.sym."


@dataclass(frozen=True)
class Reference:
    objname: str
    name: str
    pos: int


def reference_name(kernel: bool, objname: str, name: str, pos: int) -> str:
    return f"{KERNEL_PREFIX if kernel else USER_PREFIX}{objname}.{name},{pos}"


def is_reference(symbol: str, kernel: bool) -> bool:
    return symbol.startswith(KERNEL_PREFIX if kernel else USER_PREFIX)


def parse_reference(symbol: str, kernel: bool, objnames: list[str] | None = None) -> Reference | None:
    """The parts of a reference name; None when `symbol` is not one of that kind. ValueError when it has the
    prefix but not the form. With `objnames` (user space), OBJ is the longest of them that fits."""
    prefix = KERNEL_PREFIX if kernel else USER_PREFIX
    if not symbol.startswith(prefix):
        return None
    rest, _, pos = symbol[len(prefix):].rpartition(",")
    if not rest or not pos.isdigit():
        raise ValueError(f"malformed reference {symbol!r}")
    if objnames is None:
        obj, dot, name = rest.partition(".")
        if not dot or not name:
            raise ValueError(f"malformed reference {symbol!r}")
        return Reference(obj, name, int(pos))
    for obj in sorted(objnames, key=len, reverse=True):
        if rest.startswith(obj + "."):
            return Reference(obj, rest[len(obj) + 1:], int(pos))
    raise ValueError(f"{symbol}: names no target of the module")
