"""What a Go executable or plugin says about itself, as a `.gopatch` is checked against it: its Go version
(the build info the runtime embeds), its GNU build-id, its function symbols, and the fingerprint of each
package it links (`go.link.pkghashbytes.PKG`: what plugin.Open compares between program and plugin).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from patch_build.elfcore import notes

_BUILDINFO_MAGIC = b"\xff Go buildinf:"
_FINGERPRINT = "go.link.pkghashbytes."
MAX_BINARY = 1 << 30


class NotGo(Exception):
    """Not a Go ELF file we can read; the message names the file and why."""


@dataclass(frozen=True)
class GoSymbol:
    name: str
    addr: int
    size: int


class GoBinary:
    """An ELF file built by the Go toolchain, read with pyelftools (the file stays open: `close`)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            if os.path.getsize(self.path) > MAX_BINARY:
                raise NotGo(f"{self.path}: larger than {MAX_BINARY >> 20} MiB")
            self._file = open(self.path, "rb")
        except OSError as e:
            raise NotGo(f"{self.path}: {e.strerror}") from None
        try:
            self.elf = ELFFile(self._file)
            if self.elf["e_machine"] != "EM_X86_64":
                raise NotGo(f"{self.path}: not an x86-64 program")
            self.functions, self._objects = self._symbols()
        except (ELFError, ValueError) as e:
            self._file.close()
            raise NotGo(f"{self.path}: not a readable ELF file ({e})") from None
        except NotGo:
            self._file.close()
            raise

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> GoBinary:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _symbols(self) -> tuple[dict[str, GoSymbol], dict[str, GoSymbol]]:
        symtab = self.elf.get_section_by_name(".symtab")
        if symtab is None:
            raise NotGo(f"{self.path}: no symbol table (stripped, -ldflags=-s): functions cannot be found by name")
        funcs, objects = {}, {}
        for sym in symtab.iter_symbols():
            kind = sym["st_info"]["type"]
            if sym["st_shndx"] == "SHN_UNDEF" or not sym.name:
                continue
            entry = GoSymbol(sym.name, sym["st_value"], sym["st_size"])
            if kind == "STT_FUNC" and sym["st_info"]["bind"] == "STB_GLOBAL":
                funcs.setdefault(sym.name, entry)
            elif kind == "STT_OBJECT" and sym.name.startswith(_FINGERPRINT):
                objects.setdefault(sym.name, entry)
        return funcs, objects

    def read(self, addr: int, size: int) -> bytes:
        """Bytes of the loaded image at a link-time address ('' past what the file holds)."""
        for seg in self.elf.iter_segments():
            if seg["p_type"] == "PT_LOAD" and seg["p_vaddr"] <= addr < seg["p_vaddr"] + seg["p_filesz"]:
                off = addr - seg["p_vaddr"]
                size = min(size, seg["p_filesz"] - off)
                self._file.seek(seg["p_offset"] + off)
                return self._file.read(size)
        return b""

    def code(self, name: str) -> bytes:
        sym = self.functions[name]
        return self.read(sym.addr, sym.size)

    def fingerprints(self) -> dict[str, bytes]:
        """Package path -> the fingerprint the linker recorded for it (programs that can load plugins,
        and plugins, have them; others none)."""
        return {name[len(_FINGERPRINT):]: self.read(sym.addr, sym.size)
                for name, sym in sorted(self._objects.items())}

    def build_id(self) -> str | None:
        return notes.build_id(self.elf)

    def go_version(self) -> str:
        """The toolchain version in the build info (`go1.19.8`), as `go version FILE` prints it."""
        sec = self.elf.get_section_by_name(".go.buildinfo")
        data = sec.data()[:4096] if sec is not None else b""
        if not data.startswith(_BUILDINFO_MAGIC) or len(data) < 33:
            raise NotGo(f"{self.path}: no Go build info (not built by the Go toolchain)")
        if not data[15] & 2:  # before Go 1.18 the strings are pointed to, not inline
            raise NotGo(f"{self.path}: build info of a Go release before 1.18 (not supported)")
        length, at = _uvarint(data, 32)
        version = data[at:at + length]
        if len(version) != length or not version.startswith(b"go"):
            raise NotGo(f"{self.path}: malformed Go build info")
        return version.decode("ascii", "replace")


def _uvarint(data: bytes, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while at < len(data) and shift < 64:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7
    raise NotGo("malformed Go build info (a length runs past its end)")


# The stack-bound check a Go function (amd64, register ABI: g in R14) starts with, up to its conditional
# jump to morestack. The runtime never preempts a goroutine inside it (the compiler marks it unsafe for
# asynchronous preemption), so no goroutine's saved PC can lie inside: a jump written over it is safe.
_CMP_RSP = bytes.fromhex("493b6610")  # cmp 0x10(%r14),%rsp
_CMP_R12 = bytes.fromhex("4d3b6610")  # cmp 0x10(%r14),%r12
_LEA_R12 = {bytes.fromhex("4c8d6424"): 1, bytes.fromhex("4c8da424"): 4}  # lea -N(%rsp),%r12: disp8 / disp32


def stack_check_size(code: bytes) -> int:
    """Bytes of the function's stack-bound check (cmp; jbe), or 0 when it does not start with one (a
    leaf function the compiler made nosplit, assembly)."""
    at = 0
    if code[:4] in _LEA_R12:
        at = 4 + _LEA_R12[code[:4]]
        if code[at:at + 4] != _CMP_R12:
            return 0
    elif code[:4] != _CMP_RSP:
        return 0
    at += 4
    if code[at:at + 1] == b"\x76":  # jbe rel8
        return at + 2
    if code[at:at + 2] == b"\x0f\x86":  # jbe rel32
        return at + 6
    return 0
