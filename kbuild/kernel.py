"""`build_kernel_patch`: from fix.patch files and a Linux source tree to a livepatch module NAME.ko (issue 5).

Fast, kpatch-build without the two whole-kernel builds: prepare the tree once (`make olddefconfig prepare`
without what only a vmlinux link needs, kept for later runs), compile only the units the patches touch,
original then patched, with `-ffunction-sections -fdata-sections`, diff them in kernel mode against the
running kernel's symbols, and link the outputs with a generated hook against the kernel's headers
(linker.kernel). The patches are reverted whatever happens, so KSRC keeps its sources (it does keep the
objects kbuild made).
"""
from __future__ import annotations

import fcntl
import gzip
import hashlib
import lzma
import mmap
import os
import re
import shlex
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from patch_build.common.buildcmd import BuildFailed, build_environment, run_build
from patch_build.common.errors import InputError, NoChange, Refused
from patch_build.common.messages import internal_error_reported
from patch_build.diffobj.diff import DiffOptions, DiffResult, diff_objects
from patch_build.diffobj.kpatch_marks import CALLBACK_ENTRY_SIZE, CALLBACKS_PREFIX
from patch_build.diffobj.model import ObjectFile, OutputObject, OutSection
from patch_build.diffobj.problems import Problem
from patch_build.diffobj.read import read_object
from patch_build.diffobj.struct_sizes import StructSizes
from patch_build.kbuild.kernel_symbols import (
    STUB_MARK,
    Sympos,
    SymbolTable,
    read_elf_symbols,
    read_module_symvers,
    read_system_map,
)
from patch_build.kbuild.modsign import read_signer, sign_file_tool, sign_module, signing_hash
from patch_build.kbuild.timing import StepTimes
from patch_build.kbuild.options import BuildOptions, BuildResult
from patch_build.kbuild.struct_sizes import struct_sizes
from patch_build.kbuild.tree import apply_patch, in_scratch, is_build_file
from patch_build.kbuild.userspace import module_name
from patch_build.linker.kernel import link_kernel_module
from patch_build.patchformat.names import parse_reference
from patch_build.report.build import write_reports
from patch_build.report.collect import build_report, object_report
from patch_build.report.explain import UnitSources, all_left_out_message, left_out_note, unexplained_changes
from patch_build.report.model import Target
from patch_build.report.patches import line_shifts, read_hunks, touched_files

# kpatch's patch macros (kpatch-macros.h, kpatch-syscall.h), found as kpatch-build's patches expect.
KPATCH_INCLUDE = Path(os.fspath(resources.files("patch_build.templates").joinpath("kernel", "include")))
KCFLAGS = f"-ffunction-sections -fdata-sections -I{shlex.quote(os.fspath(KPATCH_INCLUDE))}"  # kbuild runs it by sh
SOURCE_SUFFIXES = (".c",)
ASSEMBLY_SUFFIXES = (".S", ".s")
HEADER_SUFFIXES = (".h",)
MODULE_NAME_MAX = 55  # MODULE_NAME_LEN - 1
LIVEPATCH_PREFIX = "livepatch_"
MODULE_LIST_MAX = 64 << 20  # bytes read of each modules.* list (Debian's are under 1 MiB)
KEYED_SECTIONS = {"__jump_table": "jump label", ".static_call_sites": "static call"}
MODULE_COMPRESSIONS = {".xz": lzma.open, ".gz": gzip.open}  # of a distribution's NAME.ko.EXT
MODULE_SIZE_MAX = 256 << 20  # bytes read of a decompressed module (Debian's largest are under 20 MiB)
# Targets of `make prepare` that neither compiling a unit nor linking the module (against the headers) needs,
# kept out with make's -o: the BTF tool of a vmlinux link (libbpf: 40% of prepare's CPU) and the vmlinux
# relocation tool. Once prepared, objtool is not re-checked either (a second of make per build).
NOT_PREPARED = ("tools/bpf/resolve_btfids", "archscripts")
NOT_REBUILT = (*NOT_PREPARED, "tools/objtool")


@dataclass
class Unit:
    source: str  # relative to KSRC
    obj: str  # the object kbuild builds from it, relative to KSRC
    target: str = ""  # vmlinux or the module's name, read from kbuild's command line
    orig: Path | None = None
    patched: Path | None = None
    output: Path | None = None
    diff: DiffResult | None = None
    optional: bool = False  # found through an included file: may not be part of this configuration
    left_out: list[dict] = field(default_factory=list)  # --only-explained: the differ's entries of those left out
    causes: dict[str, str] = field(default_factory=dict)  # left-out function -> its likely cause


def build_kernel_patch(options: BuildOptions) -> BuildResult:
    """Build OUTDIR/NAME.ko and its reports (NAME.report.json/.md/.html). Raises a PatchBuildError subclass
    whose exit_code is the command's; a refused or change-less build writes only the reports."""
    _validate(options)
    name = re.sub(r"[^A-Za-z0-9_]", "_", _default_name(options))[:MODULE_NAME_MAX]
    return in_scratch(options, name, lambda scratch: _KernelBuild(options, name, scratch).run())


def _default_name(options: BuildOptions) -> str:
    """-n, else livepatch_STEM as kpatch does: a patch named after a kernel module (module.patch) must not
    make a module of that name, which the loader refuses as already loaded."""
    return module_name(options) if options.name else f"{LIVEPATCH_PREFIX}{module_name(options)}"


def kernel_module_names(moddir: Path) -> set[str]:
    """The names a /lib/modules/RELEASE directory gives the kernel's modules, '-' written '_' as the kernel
    compares them: built in (modules.builtin, and modules.builtin.modinfo, which also names the built-in
    code that only has parameters: /sys/module/NAME exists for them all) and loadable (modules.dep, *.ko)."""
    names: set[str] = set()
    for listing, separator in (("modules.builtin", "\n"), ("modules.dep", "\n"), ("modules.builtin.modinfo", "\0")):
        try:
            with open(moddir / listing, errors="replace") as f:
                entries = f.read(MODULE_LIST_MAX).split(separator)
        except OSError:
            continue
        if listing.endswith(".modinfo"):  # NAME.KEY=VALUE
            names |= {e.split(".", 1)[0] for e in entries if "." in e.split("=", 1)[0]}
        else:  # kernel/fs/ext4/ext4.ko[: dependencies]
            names |= {_ko_name(e.split(":", 1)[0]) for e in entries if ".ko" in e}
    if (moddir / "kernel").is_dir():
        names |= {_ko_name(p.name) for p in (moddir / "kernel").rglob("*.ko*")}
    return {n.replace("-", "_") for n in names if n}


def _ko_name(path: str) -> str:
    return re.sub(r"\.ko(\.[a-z]+)?$", "", os.path.basename(path))


def _validate(options: BuildOptions) -> None:
    if not options.patches:
        raise InputError("no PATCH given")
    for patch in options.patches:
        if not patch.is_file():
            raise InputError(f"patch {patch}: no such file")
    for what, path in (("-c", options.config), ("-v", options.vmlinux), ("--system-map", options.system_map),
                       ("--headers", options.headers)):
        if path is not None and not path.exists():
            raise InputError(f"{what} {path}: no such file or directory")


def kernel_release(options: BuildOptions) -> str:
    """The target kernel's release: from VMLINUX's banner, System.map's file name, else the running kernel."""
    if options.vmlinux is not None:
        try:
            with open(options.vmlinux, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                m = re.search(rb"Linux version (\S+) ", data)
                release = m.group(1).decode(errors="replace") if m else None  # the match reads the map: not after
        except (OSError, ValueError) as e:  # ValueError: an empty file cannot be mapped
            raise InputError(f"-v {options.vmlinux}: cannot read it: {e}") from None
        if release:
            return release
    if options.system_map is not None:
        m = re.match(r"(?:System\.map|kallsyms)-(.+)$", options.system_map.name)
        if m:
            return m.group(1)
    if options.headers is not None:
        uts = options.headers / "include" / "generated" / "utsrelease.h"
        if uts.is_file():
            m = re.search(r'UTS_RELEASE "([^"]+)"', uts.read_text())
            if m:
                return m.group(1)
    return os.uname().release


def new_globals(originals: list[ObjectFile], patched: list[ObjectFile]) -> set[str]:
    """Global names the patched units define and the original ones do not: the patch's new functions and
    data, which its other units must reach inside the module (the running kernel has no such symbol)."""
    def defined(objects: list[ObjectFile]) -> set[str]:
        return {s.name for o in objects for s in o.symbols if s.is_defined and not s.is_local and not s.is_section}

    return defined(patched) - defined(originals)


def _assume_old(targets: tuple[str, ...]) -> str:
    return " ".join(f"-o {t}" for t in targets)


def _callback_tables(output: OutputObject | None) -> list[OutSection]:
    """The livepatch callback tables (kpatch-macros.h) a diff output carries."""
    return [s for s in output.sections if s.name.startswith(CALLBACKS_PREFIX)] if output is not None else []


class _KernelBuild(StepTimes):
    def __init__(self, options: BuildOptions, name: str, scratch: Path):
        super().__init__()
        self.o = options
        self.name = name
        self.scratch = scratch
        self.ksrc = options.srcdir.resolve()
        self.jobs = options.jobs or os.cpu_count() or 1
        self.env = build_environment(dict(os.environ), self.jobs)
        # The tree's makes, prepare included: kbuild compiles bounds.s, asm-offsets.s and modpost's empty.o with
        # KCFLAGS too, and would redo them (and relink modpost) at the first unit build if they changed.
        self.tree_env = dict(self.env, KCFLAGS=(self.env.get("KCFLAGS", "") + " " + KCFLAGS).strip())
        self.progress = options.progress
        self.klp_sections: list[str] = []
        self.signer = read_signer(options.sign_key, options.sign_cert)  # the options first, the tree after
        self.release = kernel_release(options)
        self.headers = (options.headers or Path("/lib/modules") / self.release / "build").resolve()
        if not (self.headers / "Makefile").is_file():
            raise InputError(f"kernel headers {self.headers}: not a kernel build tree (install "
                             f"linux-headers-{self.release} or give --headers)")
        if self.signer is not None:
            sign_file_tool(self.headers)  # found now, not after the build
        self.sig_hash = signing_hash(self.headers)
        self._check_name()

    # ---- the steps ------------------------------------------------------------------------------------

    def run(self) -> BuildResult:
        # One build at a time per tree: builds compile and patch the same files in place.
        with open(self.ksrc / ".patch-build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return self._run()

    def _run(self) -> BuildResult:
        units: list[Unit] = []
        try:
            with internal_error_reported(lambda message: self._report(units, "error", message)):
                units.extend(self._timed("units", self._units))
                return self._build(units)
        except Refused as e:
            self._report(units, "refused", f"unsupported change: {e}")
            raise
        except NoChange as e:
            self._report(units, "no-change", str(e))
            raise

    def _build(self, units: list[Unit]) -> BuildResult:
        tables = self._timed("symbols", self._symbol_tables)
        exports = self._timed("symbols", self._exports)
        self.progress.step("preparing the kernel tree")
        self._timed("prepare", self._prepare)
        sizes = self._timed("struct sizes", struct_sizes, self.ksrc, self.env, self.jobs, self.scratch)

        self.progress.step(f"building {len(units)} original unit(s)")
        self._timed("original build", self._compile, units, "original")
        self._collect(units, "orig")
        applied = []
        try:
            self.progress.step("applying patches", total=len(self.o.patches))
            for patch in self.o.patches:
                apply_patch(patch, self.ksrc)
                applied.append(patch)
                self.progress.advance(patch.name)
            self.progress.step(f"building {len(units)} patched unit(s)")
            self._timed("patched build", self._compile, units, "patched")
            self._collect(units, "patched")
        finally:
            self._revert(applied)
        self._targets(units)

        self.progress.step(f"diffing {len(units)} object(s)", total=len(units))
        self._timed("diff", self._diff, units, tables, exports, sizes)
        return self._finish(units)

    def _units(self) -> list[Unit]:
        sources: list[str] = []
        optional: set[str] = set()
        problems = []
        for patch in self.o.patches:
            for path in touched_files(patch):
                if is_build_file(path):
                    problems.append((path, "build file: changes to the build system cannot be live-patched"))
                elif path.endswith(ASSEMBLY_SUFFIXES):
                    problems.append((path, "assembly source: changes to assembly cannot be live-patched"))
                elif path.endswith(HEADER_SUFFIXES):
                    found = self._includers(path)
                    if not found:
                        self.progress.note(f"warning: no unit includes {path} directly; nothing rebuilt for it")
                    optional.update(found)
                elif path.endswith(SOURCE_SUFFIXES):
                    # A .c file another one includes (kernel/sched/build_utility.c) is built through it.
                    sources += self._includers(path) or [path]
                else:
                    problems.append((path, "not a C source or header: only code changes can be live-patched"))
        if problems:
            raise Refused(problems)
        direct = set(sources)
        sources = sorted(direct | optional)
        if not sources:
            raise NoChange("the patches change no compilation unit")
        return [Unit(s, s[:-2] + ".o", optional=s not in direct) for s in sources]

    def _includers(self, path: str) -> list[str]:
        """The .c files that include `path` directly, as the tree names it (<linux/x.h>, or "x.h" nearby)."""
        m = re.match(r"(?:arch/[^/]+/)?include/(?:uapi/)?(.+)$", path)
        if m:
            pattern, where = m.group(1), "."
        else:
            pattern, where = os.path.basename(path), os.path.dirname(path) or "."
        regex = r'^\s*#\s*include\s*[<"]' + pattern.replace(".", r"\.") + r'[>"]'
        proc = subprocess.run(["grep", "-rlE", "--include=*.c", regex, where], cwd=self.ksrc, capture_output=True,
                              text=True)
        return [os.path.normpath(p) for p in proc.stdout.split() if os.path.normpath(p) != path]

    def _config(self) -> Path:
        if self.o.config is not None:
            return self.o.config
        if (self.ksrc / ".config").is_file():
            return self.ksrc / ".config"
        boot = Path("/boot") / f"config-{self.release}"
        if boot.is_file():
            return boot
        raise InputError(f"no kernel config: {self.ksrc}/.config and {boot} do not exist; give one with -c")

    def _prepare(self) -> None:
        """`make olddefconfig prepare` unless the tree is already prepared for this config. The config given
        (-c, or /boot's) is remembered by its hash, since olddefconfig rewrites .config."""
        config = self._config()
        dot = self.ksrc / ".config"
        autoconf = self.ksrc / "include" / "generated" / "autoconf.h"
        objtool = self.ksrc / "tools" / "objtool" / "objtool"
        stamp = self.ksrc / "include" / "config" / "patch-build.config.sha256"
        wanted = hashlib.sha256(config.read_bytes()).hexdigest()
        if config.resolve() != dot.resolve():
            if stamp.is_file() and stamp.read_text() == wanted and dot.is_file():
                pass  # prepared from this config before
            else:
                shutil.copy(config, dot)
        if autoconf.is_file() and objtool.is_file() and autoconf.stat().st_mtime >= dot.stat().st_mtime:
            return
        text = dot.read_text(errors="replace")
        # Distribution configs name signing keys that are not part of the source tree.
        for key in ("CONFIG_SYSTEM_TRUSTED_KEYS", "CONFIG_SYSTEM_REVOCATION_KEYS"):
            m = re.search(rf'^{key}="([^"]+)"$', text, re.M)
            if m and not (self.ksrc / m.group(1)).exists():
                text = text.replace(m.group(0), f'{key}=""')
        dot.write_text(text)
        skipped = NOT_REBUILT if self._objtool_from_headers(objtool) else NOT_PREPARED
        # Two makes: prepare's variables (CONFIG_OBJTOOL...) are read from what olddefconfig writes.
        run_build(f"make -j{self.jobs} olddefconfig && make -j{self.jobs} {_assume_old(skipped)} prepare",
                  self.ksrc, self.tree_env, self.scratch / "prepare.log", "preparing the kernel tree (make prepare)")
        if config.resolve() != dot.resolve():
            stamp.write_text(wanted)

    def _objtool_from_headers(self, objtool: Path) -> bool:
        """Copy the headers' objtool (Debian's linux-kbuild) into a tree that has none, when both are of the same
        kernel version: it is built from the same sources, and building it is a third of prepare's CPU."""
        theirs = self.headers / "tools" / "objtool" / "objtool"
        if objtool.exists() or not os.access(theirs, os.X_OK):
            return objtool.exists()
        try:
            with open(self.ksrc / "Makefile", errors="replace") as f:
                head = f.read(4096)
            release = (self.headers / "include" / "config" / "kernel.release").read_text(errors="replace")
        except OSError:
            return False
        numbers = [re.search(rf"^{key} = (\d+)$", head, re.M) for key in ("VERSION", "PATCHLEVEL", "SUBLEVEL")]
        if not all(numbers) or not re.match(re.escape(".".join(m.group(1) for m in numbers)) + r"(?!\d)", release):
            return False
        objtool.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(theirs, objtool)
        return True

    def _compile(self, units: list[Unit], what: str) -> None:
        """Build the units' objects. A unit kbuild already compiled with our flags is compiled again by its
        recorded command (kbuild's `.o.cmd`): the same gcc + objtool line, without make's seconds of
        checking the whole tree. The others go through make; those only found through a header that this
        configuration does not build (kbuild has no rule for them) are dropped."""
        direct = {u.obj: cmd for u in units if (cmd := self._recorded_command(u)) is not None}
        self._run_recorded(direct, what)
        rest = [u for u in units if u.obj not in direct]
        if rest:
            self._make(rest, what)
            units[:] = [u for u in units if u.obj in direct or u in rest]

    def _recorded_command(self, unit: Unit) -> str | None:
        cmd_file = self.ksrc / os.path.dirname(unit.obj) / f".{os.path.basename(unit.obj)}.cmd"
        auto_conf = self.ksrc / "include" / "config" / "auto.conf"
        try:
            if cmd_file.stat().st_mtime < auto_conf.stat().st_mtime:
                return None  # configured again since
            line = cmd_file.read_text(errors="replace").split("\n", 1)[0]
        except OSError:
            return None
        prefix = f"cmd_{unit.obj} := "
        if not line.startswith(prefix) or f" {KCFLAGS} " not in line:
            return None
        return line[len(prefix):].replace("$$", "$").replace("\\#", "#")

    def _run_recorded(self, commands: dict[str, str], what: str) -> None:
        def run(item):
            obj, cmd = item
            (self.ksrc / obj).unlink(missing_ok=True)  # never diff a stale object
            # -e as kbuild runs it: the line is `gcc ...; objtool ...`, and a failed gcc must fail it.
            return obj, subprocess.run(["sh", "-ec", cmd], cwd=self.ksrc, env=self.env, capture_output=True,
                                       text=True)

        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            for obj, proc in pool.map(run, commands.items()):
                dep = self.ksrc / os.path.dirname(obj) / f".{os.path.basename(obj)}.d"
                dep.unlink(missing_ok=True)  # make's fixdep would have folded it into the .cmd file
                if proc.returncode:
                    lines = [l for l in (proc.stderr + proc.stdout).splitlines() if l.strip()]
                    first = next((l for l in lines if "error:" in l), lines[-1] if lines else "")
                    raise BuildFailed(f"{what} build of {obj} failed: {first}", lines[-15:],
                                      self.scratch / f"build-{what}.log")

    def _make(self, units: list[Unit], what: str) -> None:
        objs = " ".join(u.obj for u in units)
        log = self.scratch / f"build-{what}.log"
        keep_going = "-k " if any(u.optional for u in units) else ""
        try:
            run_build(f"make {keep_going}-j{self.jobs} {_assume_old(NOT_REBUILT)} {objs}", self.ksrc, self.tree_env,
                      log, f"{what} build of {objs}")
        except BuildFailed:
            text = log.read_text(errors="replace")
            unknown = set(re.findall(r"No rule to make target '([^']+)'", text))
            if not keep_going or any(not u.optional and u.obj in unknown for u in units) \
                    or "error:" in text or not unknown:
                raise
            units[:] = [u for u in units if u.obj not in unknown]
            if not units:
                raise NoChange("the patches change no unit this configuration builds") from None

    def _collect(self, units: list[Unit], what: str) -> None:
        outdir = self.scratch / what
        outdir.mkdir(exist_ok=True)
        for i, u in enumerate(units):
            built = self.ksrc / u.obj
            if not built.is_file():
                raise InputError(f"kbuild did not build {u.obj} (not part of this configuration?)")
            dest = outdir / f"{i:04d}-{built.name}"
            shutil.copy2(built, dest)
            setattr(u, what, dest)

    def _revert(self, applied: list[Path]) -> None:
        for patch in reversed(applied):
            proc = subprocess.run(["patch", "-p1", "-R", "--batch", "--no-backup-if-mismatch", "-d",
                                   os.fspath(self.ksrc), "-i", os.fspath(patch.resolve())],
                                  capture_output=True, text=True)
            if proc.returncode:
                raise InputError(f"could not revert {patch.name} in {self.ksrc}: {proc.stdout.strip()[-300:]}")

    def _targets(self, units: list[Unit]) -> None:
        """vmlinux or the module each unit is linked into, from kbuild's recorded command line."""
        for u in units:
            cmd_file = self.ksrc / os.path.dirname(u.obj) / f".{os.path.basename(u.obj)}.cmd"
            line = cmd_file.read_text(errors="replace").split("\n", 1)[0] if cmd_file.is_file() else ""
            modname = re.search(r"-DKBUILD_MODNAME='\"([^\"]+)\"'", line)
            u.target = modname.group(1) if " -DMODULE " in f"{line} " and modname else "vmlinux"
        if self.o.targets:
            wanted = {t.replace("-", "_") for t in self.o.targets}
            skipped = [u for u in units if u.target not in wanted]
            for u in skipped:
                self.progress.note(f"warning: {u.source} belongs to {u.target}, not a -t target; skipped")
            units[:] = [u for u in units if u.target in wanted]
            if not units:
                raise NoChange(f"the patches change nothing in {', '.join(self.o.targets)}")

    # ---- symbols -------------------------------------------------------------------------------------

    def _symbol_tables(self) -> dict[str, SymbolTable]:
        if self.o.vmlinux is not None:
            return {"vmlinux": read_elf_symbols(self.o.vmlinux, "vmlinux", by_address=True)}
        path = self.o.system_map or Path("/boot") / f"System.map-{self.release}"
        if not path.is_file():
            raise InputError(f"no symbol table for {self.release}: {path} does not exist; give --system-map or -v")
        with open(path, errors="replace") as f:
            stub = STUB_MARK in f.readline()
        if stub and self.o.system_map is None and self.release == os.uname().release:
            path = Path("/proc/kallsyms")  # the running kernel's own table (needs root for addresses)
        return read_system_map(path)

    def _module_dirs(self) -> list[Path]:
        """The target kernel's /lib/modules/RELEASE: this system's, or next to the image the symbols are of."""
        dirs = [Path("/lib/modules") / self.release]
        if self.o.system_map is not None:
            dirs.append(self.o.system_map.resolve().parent.parent / "lib" / "modules" / self.release)
        return [d for d in dirs if d.is_dir()]

    def _check_name(self) -> None:
        """Refuse a module name the kernel already has (built in or loadable): it would not load."""
        taken = {n for d in self._module_dirs() for n in kernel_module_names(d)}
        if not taken:
            self.progress.note(f"warning: no module list of {self.release} found (modules.builtin, modules.dep): "
                               f"the name {self.name} is not checked against the kernel's modules")
        elif self.name.replace("-", "_") in taken:
            raise InputError(f"module name {self.name}: the kernel {self.release} has a module of that name; "
                             "choose another with -n")

    def _module_table(self, tables: dict[str, SymbolTable], module: str) -> SymbolTable | None:
        if module in tables:
            return tables[module]
        for root in self._module_dirs():
            for ko in sorted(root.rglob("*.ko*")):
                if _ko_name(ko.name).replace("-", "_") == module:
                    tables[module] = read_elf_symbols(self._uncompressed(ko), module, by_address=False)
                    return tables[module]
        self.progress.note(f"warning: no symbol table for module {module}: its functions are not checked")
        return None

    def _uncompressed(self, ko: Path) -> Path:
        """The module itself: Debian's 6.12 modules are xz-compressed (NAME.ko.xz)."""
        opener = MODULE_COMPRESSIONS.get(ko.suffix)
        if opener is None:
            return ko
        out = self.scratch / "modules" / ko.stem
        out.parent.mkdir(exist_ok=True)
        try:
            with opener(ko) as f:
                data = f.read(MODULE_SIZE_MAX + 1)
        except (OSError, EOFError, lzma.LZMAError) as e:
            raise InputError(f"{ko}: cannot decompress it ({e})") from None
        if len(data) > MODULE_SIZE_MAX:
            raise InputError(f"{ko}: decompresses to more than {MODULE_SIZE_MAX >> 20} MiB: not a kernel module")
        out.write_bytes(data)
        return out

    def _exports(self) -> dict[str, str]:
        for path in (self.headers / "Module.symvers", self.ksrc / "Module.symvers"):
            if path.is_file() and path.stat().st_size:
                return read_module_symvers(path)
        raise InputError(f"no Module.symvers in {self.ksrc} or {self.headers}: cannot tell exported symbols")

    # ---- diff, link, report ---------------------------------------------------------------------------

    def _diff(self, units: list[Unit], tables: dict[str, SymbolTable], exports: dict[str, str],
              sizes: StructSizes) -> None:
        outdir = self.scratch / "out"
        outdir.mkdir(exist_ok=True)
        originals = [read_object(os.fspath(u.orig)) for u in units]
        provided = new_globals(originals, [read_object(os.fspath(u.patched)) for u in units])
        hunks = read_hunks(self.o.patches) if self.o.only_explained else []
        shifts = line_shifts(self.o.patches)
        for i, u in enumerate(units):
            table = tables["vmlinux"] if u.target == "vmlinux" else self._module_table(tables, u.target)
            # A module's own exports are reached through klp relocations too: the patch must load without it.
            exported = {n for n, owner in exports.items() if owner != u.target or owner == "vmlinux"}
            vmlinux = tables.get("vmlinux")

            def extern_objname(name: str, target=u.target, table=table) -> str:
                if target != "vmlinux" and (table is None or not table.defines(name)) \
                        and vmlinux is not None and vmlinux.defines(name):
                    return "vmlinux"
                return target

            options = DiffOptions(kernel=True, objname=u.target, exported=exported,
                                  sympos=Sympos(table, originals[i]), extern_objname=extern_objname, provided=provided,
                                  line_shifts=shifts, struct_sizes=sizes)
            u.diff = diff_objects(os.fspath(u.orig), os.fspath(u.patched), options)
            if hunks:
                # The tree has its original sources back: macro and type names are read from those.
                u.left_out, u.causes = unexplained_changes(u.diff, UnitSources(hunks, self.ksrc, u.source))
                if u.left_out:
                    options.leave_out = frozenset(u.causes)
                    u.diff = diff_objects(os.fspath(u.orig), os.fspath(u.patched), options)
                for name, cause in u.causes.items():
                    self.progress.note(left_out_note(u.source, name, cause))
            if table is not None:
                for ch in u.diff.changed_functions:
                    if not table.has_function(ch.old_name):
                        u.diff.errors.append(Problem(ch.old_name, f"not a function of the running {u.target} "
                                                                   "(inlined or renamed there?): cannot redirect it"))
            if u.diff.output is not None:
                u.diff.errors += self._check_klp_symbols(u.diff.output, u.target, tables)
            if u.diff.has_changes and not u.diff.errors:
                u.output = outdir / f"{i:04d}-{os.path.basename(u.obj)}"
                u.diff.write(os.fspath(u.output))
            self.progress.advance(u.source)
        self._check_callbacks(units)

    @staticmethod
    def _check_callbacks(units: list[Unit]) -> None:
        """The livepatch core calls one callback per object and stage: refuse more now rather than at load."""
        sources: dict[tuple[str, str], list[Unit]] = {}
        for u in units:
            for sec in _callback_tables(u.diff.output):
                key = (u.target, sec.name[len(CALLBACKS_PREFIX):])
                sources.setdefault(key, []).extend([u] * (len(sec.data) // CALLBACK_ENTRY_SIZE))
        for (target, stage), found in sorted(sources.items()):
            if len(found) > 1:
                names = ", ".join(sorted({u.source for u in found}))
                found[-1].diff.errors.append(Problem(f"{CALLBACKS_PREFIX}{stage}", (
                    f"{len(found)} {stage} callbacks for {target} ({names}): the livepatch core calls one per "
                    "object and stage")))

    def _check_klp_symbols(self, output, target: str, tables: dict[str, SymbolTable]) -> list[Problem]:
        """Each `.klp.sym.OBJ.NAME,POS` must name exactly one symbol of the running OBJ, or the livepatch core
        refuses the module at load time: say so now, with the reason."""
        problems = []
        for sym in output.symbols:
            ref = parse_reference(sym.name, kernel=True)
            if ref is None:
                continue
            objname, name, pos = ref.objname, ref.name, ref.pos
            table = tables["vmlinux"] if objname == "vmlinux" else self._module_table(tables, objname)
            if table is None:
                continue
            count = len(table.named(name))
            if count == 0:
                problems.append(Problem(name, f"used by the patch but not a symbol of the running {objname} "
                                              "(inlined or optimised away there?)"))
            elif pos > count or (pos == 0 and count > 1):
                problems.append(Problem(name, f"{count} symbols of the running {objname} have this name and the "
                                              f"reference cannot tell which (position {pos})"))
        # The loader sets up a module's jump labels and static calls before the livepatch core resolves
        # relocations against other modules: such a key would still be unresolved (kpatch refuses them too).
        for sec in output.sections:
            if sec.name not in KEYED_SECTIONS:
                continue
            for rel in sec.relocations:
                ref = parse_reference(rel.symbol.name, kernel=True)
                if ref and ref.objname != "vmlinux":
                    problems.append(Problem(ref.name, f"a {KEYED_SECTIONS[sec.name]} key of module {ref.objname}, "
                                                        "which a livepatch cannot use (use static_key_enabled() or "
                                                        "a plain call instead)"))
        return problems

    def _finish(self, units: list[Unit]) -> BuildResult:
        o = self.o
        errors = [(f"{u.source}: {e.symbol}", e.reason) for u in units for e in u.diff.errors]
        if errors:
            raise Refused(errors)
        changed = [u for u in units if u.output is not None]
        if not changed:
            left_out = [name for u in units for name in u.causes]
            if left_out:
                raise NoChange(all_left_out_message(left_out))
            raise NoChange(f"no functional change: {', '.join(u.source for u in units)} compiled to the same code")
        if not any(u.diff.changed_functions or _callback_tables(u.diff.output) for u in changed):
            raise NoChange("no function to replace and no livepatch callback: the patch only adds code nothing "
                           "running calls")
        self.progress.step("linking the livepatch module")
        module, self.klp_sections = self._timed("link", link_kernel_module, [u.output for u in changed], self.name,
                                                self.headers, self.scratch, not o.non_replace, self.jobs, self.env)
        o.outdir.mkdir(parents=True, exist_ok=True)
        final = o.outdir / f"{self.name}.ko"
        tmp = final.with_name(final.name + ".tmp")
        shutil.copy2(module, tmp)
        if self.signer is not None:
            self._timed("sign", sign_module, tmp, self.signer, self.headers, self.sig_hash)
        os.replace(tmp, final)
        functions = [f"{ch.objname}:{ch.old_name}" for u in changed for ch in u.diff.changed_functions]
        reports = self._report(units, "built", f"{len(functions)} function(s) replaced", final)
        return BuildResult(module=final, report_json=reports[0], name=self.name, kind="kernel",
                           diffs=[u.diff for u in units], functions=functions, timings=dict(self.timings),
                           extra_reports=reports[1:])

    def _report(self, units: list[Unit], status: str, message: str, module: Path | None = None) -> list[Path]:
        """NAME.report.json/.md/.html in OUTDIR (report/'s model), also when the build is refused."""
        o = self.o
        objects = [object_report(u.diff, source=u.source, patches=o.patches, relative_to=self.ksrc, object_name=u.obj,
                                 left_out=u.left_out) for u in units if u.diff is not None]
        targets = sorted({u.target for u in units if u.target})
        details = {"kernel release": self.release, "atomic replace": "no" if o.non_replace else "yes"}
        if self.klp_sections:
            details["livepatch relocation sections"] = ", ".join(self.klp_sections)
        if module is not None:
            details["module signature"] = self.signer.describe(self.sig_hash) if self.signer else "unsigned"
        report = build_report(self.name, "kernel", objects, status=status, message=message, patches=o.patches,
                              targets=[Target(name=t, kernel_release=self.release) for t in targets],
                              module=module, relative_to=self.ksrc, details=details)
        return self._timed("report", write_reports, report, o.outdir, self.name)
