"""The functions the Go compiler made, read from its listing (`go build -gcflags=PKG=-S`).

The listing gives, per text symbol, its instructions (with source positions), its code bytes and its
relocations by target symbol name (`rel 51+4 t=14 type.map[string]int+0`). Two builds of a package are
compared the way the differ compares objects: a function changed when its bytes or what its relocations
point at differ; positions (line numbers) are left out, so code that only moved is not a change. A
function that inlines a changed one has changed bytes itself: inlining is seen without DWARF.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

_HEADER = re.compile(r"^(\S.*?) STEXT\b(.*)$")
_DATA = re.compile(r"^\S.*? S[A-Z]+\b")  # another symbol's listing (data): ends the current function
_BYTES = re.compile(r"^\t0x[0-9a-f]{4,} ((?:[0-9a-f]{2} )*[0-9a-f]{2})(?: |$)")
_INSN = re.compile(r"^\t0x[0-9a-f]{4,} (\d{5,}) \(([^)]*)\)\t(.*)$")
_REL = re.compile(r"^\trel (\d+)\+(\d+) t=(\d+) (.+)\+(-?\d+)$")


@dataclass
class GoFunction:
    name: str  # the symbol: example.com/app/internal/store.(*Store).add
    size: int = 0
    code: bytearray = field(default_factory=bytearray)
    relocs: list[tuple[int, int, int, str, int]] = field(default_factory=list)  # offset, size, type, symbol, addend
    insns: list[tuple[int, str]] = field(default_factory=list)  # offset, instruction text (no position)
    lines: set[tuple[str, int]] = field(default_factory=set)  # (file, line) of its code, inlined code's too

    def key(self) -> tuple:
        return bytes(self.code), tuple(self.relocs)

    def instruction_at(self, offset: int) -> int:
        """Index in insns of the instruction holding byte `offset` (-1 when none)."""
        found = -1
        for i, (off, _) in enumerate(self.insns):
            if off > offset:
                break
            found = i
        return found


def parse_listing(text: str) -> dict[str, GoFunction]:
    """Text symbols of a `-S` listing by name (package headers `# PKG` and data symbols are skipped)."""
    funcs: dict[str, GoFunction] = {}
    current = None
    for line in text.splitlines():
        m = _HEADER.match(line)
        if m:
            size = re.search(r"\bsize=(\d+)", m.group(2))
            current = GoFunction(m.group(1), int(size.group(1)) if size else 0)
            funcs[current.name] = current
            continue
        if current is None:
            continue
        if _DATA.match(line) or line.startswith("#"):
            current = None
            continue
        m = _INSN.match(line)
        if m:
            if not m.group(3).startswith(("PCDATA", "FUNCDATA")):  # tables, not code
                current.insns.append((int(m.group(1)), m.group(3)))
                file, _, line = m.group(2).rpartition(":")
                if line.isdigit():
                    current.lines.add((file, int(line)))
            continue
        m = _BYTES.match(line)
        if m:
            current.code += bytes.fromhex(m.group(1).replace(" ", ""))
            continue
        m = _REL.match(line)
        if m:
            current.relocs.append((int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4), int(m.group(5))))
    return funcs


def changed_functions(orig: dict[str, GoFunction], patched: dict[str, GoFunction]) -> tuple[list[str], list[str]]:
    """(changed, new) function names, sorted."""
    changed = sorted(n for n, f in patched.items() if n in orig and orig[n].key() != f.key())
    new = sorted(n for n in patched if n not in orig)
    return changed, new


def identity_uses(func: GoFunction, pkg: str) -> list[str]:
    """Type descriptors and itabs of `pkg`'s own named types that `func` uses for anything but allocating
    (runtime.newobject): interface conversions, type assertions and switches, reflection. The plugin's copy
    of the package has types of its own: such a use would not match the running program's types."""
    own = re.compile(r"(?:^|[^\w.])" + re.escape(pkg) + r"\.\w")
    uses = []
    for offset, _, _, sym, _ in func.relocs:
        if not (sym.startswith("type.") or sym.startswith("go.itab.")) or sym.startswith("type.."):
            continue
        if not own.search(sym):
            continue
        i = func.instruction_at(offset)
        after = [text for _, text in func.insns[i + 1:] if text != "NOP"][:1] if i >= 0 else []
        if (sym.startswith("type.") and func.insns[i][1].startswith("LEAQ") and after
                and after[0] == "CALL\truntime.newobject(SB)"):
            continue
        if sym not in uses:
            uses.append(sym)
    return uses


def disassembly(func: GoFunction | None) -> list[tuple[int, str, str]]:
    """(offset, text, comparison key) per instruction, as report.disasm.side_by_side takes them: a branch
    inside the function compares equal wherever its target moved."""
    out = []
    for offset, text in func.insns if func is not None else []:
        op, _, arg = text.partition("\t")
        if op == "TEXT":
            continue
        key = f"{op} <local>" if (op.startswith("J") or op == "CALL") and arg.isdigit() else text
        out.append((offset, text.replace("\t", " "), key))
    return out
