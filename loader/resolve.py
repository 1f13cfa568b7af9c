"""Resolve a patch module's references in a running process (docs/design.md, "Names of references").

`.kpatch.sym.OBJ.NAME,POS` names a local symbol of target OBJ (POS 0: the only local of that name, else
the POS-th in .symtab order); a plain name is a global, looked up in the module's targets first, then in
every loaded object's exports in map order, as the dynamic linker's global scope would.
"""
from __future__ import annotations

from patch_build.elfcore.constants import STB_WEAK, STT_FUNC, STT_GNU_IFUNC, STT_TLS
from patch_build.elfcore.model import Symbol
from patch_build.elfcore.symbols import ElfSymbol
from patch_build.loader.objects import LoadedObject
from patch_build.loader.procfs import Memory
from patch_build.patchformat.module import Func, Target
from patch_build.patchformat.names import is_reference, parse_reference


class ResolveError(Exception):
    pass


def split_local(name: str, objnames: list[str]) -> tuple[str, str, int]:
    """`.kpatch.sym.OBJ.NAME,POS` -> (OBJ, NAME, POS), OBJ one of the module's target names."""
    try:
        ref = parse_reference(name, kernel=False, objnames=objnames)
    except ValueError as e:
        raise ResolveError(str(e)) from None
    if ref is None:
        raise ResolveError(f"{name!r} is not a reference to a local symbol")
    return ref.objname, ref.name, ref.pos


class Resolver:
    def __init__(self, objects: list[LoadedObject], targets: dict[str, LoadedObject], mem: Memory):
        self.objects = objects
        self.targets = targets  # module target name -> loaded object
        self.mem = mem

    def _addr(self, obj: LoadedObject, sym: ElfSymbol, what: str) -> tuple[int, int]:
        if sym.type == STT_TLS:
            raise ResolveError(f"{what}: thread-local variables are not supported")
        if sym.type == STT_GNU_IFUNC:
            return self._ifunc(sym.name, what), sym.size
        return obj.base + sym.value, sym.size

    def _local_symbol(self, objname: str, name: str, pos: int) -> ElfSymbol:
        obj = self.targets[objname]
        if not obj.symtab:
            raise ResolveError(f"{objname} has no symbol table (stripped): cannot find local symbol {name}")
        cands = obj.locals_named(name)
        if pos == 0 and len(cands) == 1:
            return cands[0]
        if pos == 0 and not cands and name in obj.globals:  # the static became global: same object
            return obj.globals[name]
        if 0 < pos <= len(cands):
            return cands[pos - 1]
        raise ResolveError(f"{objname}: local symbol {name} position {pos} not found "
                           f"({len(cands)} local symbol(s) of that name)")

    def local(self, objname: str, name: str, pos: int) -> tuple[int, int]:
        return self._addr(self.targets[objname], self._local_symbol(objname, name, pos), name)

    def global_(self, name: str) -> tuple[int, int] | None:
        for obj in self.targets.values():
            if name in obj.globals:
                return self._addr(obj, obj.globals[name], name)
        for obj in self.objects:
            if name in obj.exports:
                return self._addr(obj, obj.exports[name], name)
        return None

    def __call__(self, sym: Symbol) -> tuple[int, int]:
        """Address and size of an undefined symbol of the module."""
        if is_reference(sym.name, kernel=False):
            return self.local(*split_local(sym.name, list(self.targets)))
        found = self.global_(sym.name)
        if found is not None:
            return found
        if sym.bind == STB_WEAK:
            return 0, 0
        raise ResolveError(f"undefined symbol {sym.name} is not defined in the process")

    def old_function(self, func: Func) -> tuple[int, int]:
        """Address and size of the function `func` replaces, from the target's own symbol table by name (and
        sympos): the name is authoritative, a nonzero `old_addr` of the module only a claim that must agree."""
        obj = self.targets.get(func.objname)
        if obj is None:
            raise ResolveError(f"function {func.name}: object {func.objname} is not a target of the module")
        if func.sympos or obj.locals_named(func.name):
            sym = self._local_symbol(func.objname, func.name, func.sympos)
        elif func.name in obj.globals:
            sym = obj.globals[func.name]
        else:
            raise ResolveError(f"function {func.name} not found in {func.objname}")
        if sym.type != STT_FUNC:
            raise ResolveError(f"{func.name}: not a function in {func.objname} (symbol type {sym.type})")
        if func.old_addr and func.old_addr != sym.value:
            raise ResolveError(f"{func.name}: the module gives its address as {func.old_addr:#x}, but it is at "
                               f"{sym.value:#x} in {func.objname}")
        return obj.base + sym.value, sym.size

    def _ifunc(self, name: str, what: str) -> int:
        """An IFUNC's implementation is what the process already bound it to: read a GOT slot of an
        object that imports it (a lazy slot still points to a PLT entry, which is callable too)."""
        for obj in self.objects:
            slot = obj.elf.got_slots().get(name)
            if slot is not None:
                return self.mem.read_u64(obj.base + slot)
        raise ResolveError(f"{what}: indirect function (IFUNC) that no loaded object imports")


def match_targets(targets: list[Target], objects: list[LoadedObject]) -> dict[str, LoadedObject]:
    """The loaded object of each module target, by file name, else by build-id; raises ResolveError
    naming a target that is missing or was built from other sources."""
    found = {}
    for t in targets:
        named = [o for o in objects if o.name == t.name]
        obj = next((o for o in named + objects if t.build_id and o.build_id == t.build_id), None) or \
            next(iter(named), None)
        if obj is None:
            raise ResolveError(f"target {t.name} is not loaded in the process")
        if t.build_id and obj.build_id != t.build_id:
            raise ResolveError(f"target {t.name}: build-id {obj.build_id or 'none'} of the running object differs "
                               f"from the module's {t.build_id} (built from other sources)")
        found[t.name] = obj
    return found
