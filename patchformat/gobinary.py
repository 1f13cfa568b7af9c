"""What a Go executable or plugin says about itself, as a `.gopatch` is checked against it: its Go version
(the build info the runtime embeds), its GNU build-id, its function symbols, and the fingerprint of each
package it links (`go.link.pkghashbytes.PKG`: what plugin.Open compares between program and plugin).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from patch_build.common.errors import InputError
from patch_build.elfcore.binary import read_binary
from patch_build.elfcore.constants import SHN_UNDEF, STB_GLOBAL, STT_FUNC, STT_OBJECT


_BUILDINFO_MAGIC = b"\xff Go buildinf:"
_BUILDINFO_READ = 4096  # of .go.buildinfo: its header and the version string it starts with
_FINGERPRINT = "go.link.pkghashbytes."


class NotGo(Exception):
    """Not a Go ELF file we can read; the message names the file and why."""


@dataclass(frozen=True)
class GoSymbol:
    name: str
    addr: int
    size: int


class GoBinary:
    """An ELF file built by the Go toolchain, read whole by elfcore (`elfcore.binary`)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            self._binary = read_binary(self.path)
        except InputError as e:
            raise NotGo(str(e)) from None
        if not self._binary.x86_64:
            raise NotGo(f"{self.path}: not an x86-64 program")
        self.functions, self._objects = self._symbols()

    def _symbols(self) -> tuple[dict[str, GoSymbol], dict[str, GoSymbol]]:
        if not self._binary.symtab:
            raise NotGo(f"{self.path}: no symbol table (stripped, -ldflags=-s): functions cannot be found by name")
        funcs, objects = {}, {}
        for sym in self._binary.symtab:
            if sym.shndx == SHN_UNDEF or not sym.name:
                continue
            entry = GoSymbol(sym.name, sym.value, sym.size)
            if sym.type == STT_FUNC and sym.bind == STB_GLOBAL:
                funcs.setdefault(sym.name, entry)
            elif sym.type == STT_OBJECT and sym.name.startswith(_FINGERPRINT):
                objects.setdefault(sym.name, entry)
        return funcs, objects

    def read(self, addr: int, size: int) -> bytes:
        """Bytes of the loaded image at a link-time address (fewer where its segment ends, none outside)."""
        return self._binary.read(addr, size)

    def section_data(self, name: str) -> tuple[int, bytes] | None:
        """(address, contents as loaded) of the allocated section called `name`, or None."""
        return self._binary.section_data(name)

    def code(self, name: str) -> bytes:
        sym = self.functions[name]
        return self.read(sym.addr, sym.size)

    def fingerprints(self) -> dict[str, bytes]:
        """Package path -> the fingerprint the linker recorded for it (programs that can load plugins,
        and plugins, have them; others none)."""
        return {name[len(_FINGERPRINT):]: self.read(sym.addr, sym.size)
                for name, sym in sorted(self._objects.items())}

    def build_id(self) -> str | None:
        return self._binary.build_id

    def go_version(self) -> str:
        """The toolchain version in the build info (`go1.19.8`), as `go version FILE` prints it."""
        sec = self._binary.section(".go.buildinfo")
        data = self.read(sec[0], min(sec[1], _BUILDINFO_READ)) if sec is not None else b""
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
