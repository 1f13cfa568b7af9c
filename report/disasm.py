"""Side-by-side disassembly of a function in the original and patched objects (capstone).

Relocatable objects hold zeros where the linker will write addresses, so a raw disassembly shows every
call as a call to the next instruction. Each instruction that carries a relocation is shown with the
relocation's target by name instead (`call printf`, `lea rdi, [rip + "hello, %s\\n"]`), which is also what
makes a changed callee or string literal visible in the diff. Offsets are function-relative.
"""
from __future__ import annotations

import difflib
import re

from patch_build.elfcore import x86_64
from patch_build.elfcore.constants import STT_NOTYPE
from patch_build.elfcore.model import ObjectFile, Relocation, Section, Symbol
from patch_build.report.model import DisasmRow, FunctionDiff

MAX_ROWS = 2000  # longer functions are cut: a release engineer reads the first screens, not 50k lines
_STRING_SHOWN = 48
_RIP_OPERAND = re.compile(r"\[rip(?: [+-] 0x[0-9a-f]+)?\]")
_BRANCH_TARGET = re.compile(r"^(?:0x[0-9a-f]+|\d+)$")  # capstone writes small numbers in decimal
_ZERO_IMMEDIATE = re.compile(r"(^|, )0$")  # the zeroed field of an absolute relocation


def find_function(obj: ObjectFile, name: str) -> Symbol | None:
    return next((s for s in obj.functions() if s.name == name and s.section is not None), None)


def _c_string(section: Section, offset: int) -> str:
    end = section.data.find(b"\0", offset)
    raw = section.data[offset:end if end >= 0 else None]
    text = raw.decode("utf-8", "backslashreplace")
    text = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    if len(text) > _STRING_SHOWN:
        text = text[:_STRING_SHOWN] + "..."
    return f'"{text}"'


def _offset_text(value: int) -> str:
    return "" if value == 0 else f"{value:+#x}"


def relocation_target(rela: Relocation, insn_end: int) -> str:
    """The relocation's target as a reader would name it: symbol+offset, or a string literal."""
    rtype = x86_64.RELOC_TYPES.get(rela.type)
    # A PC-relative field is relative to its own address, the CPU's to the next instruction's.
    value = rela.addend + (insn_end - rela.offset if rtype is not None and rtype.pc_relative else 0)
    sym = rela.symbol
    section = sym.section
    if section is not None and (sym.is_section or sym.type == STT_NOTYPE):  # .LC0-style labels too
        offset = sym.value + value
        if section.is_strings and 0 <= offset < section.size:
            return _c_string(section, offset)
        if sym.is_section:
            inner = section.symbol_at(offset)
            if inner is not None:
                return inner.name + _offset_text(offset - inner.value)
    return sym.display + _offset_text(value) + (rtype.display_suffix if rtype is not None else "")


def _insn_text(mnemonic: str, op_str: str, target: str | None) -> tuple[str, str]:
    """(shown text, comparison key). Branch targets inside the function compare as equal wherever they are."""
    if target is not None:
        if _RIP_OPERAND.search(op_str):
            op_str = _RIP_OPERAND.sub(lambda _: f"[rip + {target}]", op_str, count=1)
        elif _BRANCH_TARGET.match(op_str) and mnemonic.startswith(("j", "call", "loop")):
            op_str = target
        elif _ZERO_IMMEDIATE.search(op_str):
            op_str = _ZERO_IMMEDIATE.sub(lambda m: m.group(1) + target, op_str, count=1)
        else:
            op_str = f"{op_str}  <{target}>"
        text = f"{mnemonic} {op_str}".strip()
        return text, text
    text = f"{mnemonic} {op_str}".strip()
    if mnemonic.startswith(("j", "call", "loop")) and _BRANCH_TARGET.match(op_str):
        return text, f"{mnemonic} <local>"
    return text, text


def disassemble(func: Symbol) -> list[tuple[int, str, str]]:
    """(offset, text, comparison key) for each instruction of `func`."""
    section = func.section
    start = func.value
    code = section.data[start:start + func.size] if func.size else section.data[start:]
    relocs = [r for r in section.relocations if start <= r.offset < start + len(code)]
    lines = []
    ri = 0
    for address, size, mnemonic, op_str in x86_64.disassembler().disasm_lite(code, 0):
        end = address + size
        while ri < len(relocs) and relocs[ri].offset - start < address:
            ri += 1
        target = None
        if ri < len(relocs) and relocs[ri].offset - start < end:
            target = relocation_target(relocs[ri], end + start)
        text, key = _insn_text(mnemonic, op_str, target)
        lines.append((address, text, key))
    return lines


def side_by_side(old: list[tuple[int, str, str]], new: list[tuple[int, str, str]]) -> list[DisasmRow]:
    rows: list[DisasmRow] = []
    matcher = difflib.SequenceMatcher(None, [k for _, _, k in old], [k for _, _, k in new], autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        for k in range(max(i2 - i1, j2 - j1)):
            o = old[i1 + k] if i1 + k < i2 else None
            n = new[j1 + k] if j1 + k < j2 else None
            row_tag = tag if tag in ("equal", "replace") else ("delete" if n is None else "insert")
            if tag == "replace" and (o is None or n is None):
                row_tag = "delete" if n is None else "insert"
            rows.append(DisasmRow(tag=row_tag,
                                  old_offset=o[0] if o else None, old_text=o[1] if o else None,
                                  new_offset=n[0] if n else None, new_text=n[1] if n else None))
    return rows


def function_diff(orig: ObjectFile | None, old_name: str | None, patched: ObjectFile, name: str) -> FunctionDiff | None:
    """The side-by-side diff of one function; a NEW function (no original) has only the patched side."""
    new_func = find_function(patched, name)
    if new_func is None:
        return None
    old_func = find_function(orig, old_name) if orig is not None and old_name else None
    old = disassemble(old_func) if old_func is not None else []
    rows = side_by_side(old, disassemble(new_func))
    return FunctionDiff(name=name, rows=rows[:MAX_ROWS], truncated=len(rows) > MAX_ROWS)
