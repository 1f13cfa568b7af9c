"""`build_go_patch`: from a fix.patch and a Go module to NAME.gopatch (issue 16). docs/go.md says why it is safe.

build info of the deployed binary (`go version -m`) -> original build in SRCDIR with its flags and the
compiler's listing of the module's packages -> check it is the deployed code -> patched build (the patched
files laid over SRCDIR with `go build -overlay`: SRCDIR is never written) -> changed functions by
comparing the listings (kbuild.goasm) -> refusals -> a copy of each changed package under a derived import
path (go/gocopy) and a plugin of them -> NAME.gopatch (patchformat.gopatch) and the reports.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from patch_build.common.messages import internal_error_reported
from patch_build.common.errors import InputError, NoChange, PatchBuildError, Refused
from patch_build.kbuild.goasm import GoFunction, changed_functions, disassembly, identity_uses, parse_listing
from patch_build.kbuild.gotool import BuildInfo, go_environment, go_list, read_build_info, run_go, toolchain_version
from patch_build.kbuild.timing import StepTimes
from patch_build.kbuild.options import BuildOptions, BuildResult, module_name
from patch_build.kbuild.tree import apply_patch, check_patch, copy_tree, in_scratch
from patch_build.patchformat.gobinary import GoBinary, NotGo, stack_check_size
from patch_build.patchformat.gopatch import SUFFIX, GoBind, GoFunc, GoPatch, write_gopatch
from patch_build.report.build import write_reports
from patch_build.report.collect import build_report
from patch_build.report.disasm import MAX_ROWS, side_by_side
from patch_build.report.model import Explanation, Function, FunctionDiff, ObjectReport, Problem, Target
from patch_build.report.patches import read_hunks, same_file

GO_SOURCES = Path(__file__).resolve().parent.parent / "go"  # the agent and gocopy
JUMP_SIZE = 5  # jmp rel32, written over the stack-bound check
BIND_SIZE = 14  # jmp *0(%rip) and the address: a plugin function bound back to the program's


def is_go_module(srcdir: Path) -> bool:
    return (srcdir / "go.mod").is_file()


def build_go_patch(options: BuildOptions) -> BuildResult:
    """Build OUTDIR/NAME.gopatch and its reports; raises a PatchBuildError subclass (exit code) otherwise."""
    if not is_go_module(options.srcdir):
        raise InputError(f"SRCDIR {options.srcdir}: no go.mod (not a Go module)")
    if not options.patches:
        raise InputError("no PATCH given")
    for patch in options.patches:
        if not patch.is_file():
            raise InputError(f"patch {patch}: no such file")
    if options.sign_key or options.sign_cert:
        raise InputError("--sign-key/--sign-cert: Go patches are not signed (their plugin's SHA-256 is recorded)")
    binary = _deployed(options)
    name = module_name(options)
    return in_scratch(options, name, lambda scratch: _GoBuild(options, name, scratch, binary).run())


def _deployed(options: BuildOptions) -> Path:
    if options.target_binaries:
        binary = options.target_binaries[0]
    elif len(options.targets) == 1:
        given = Path(options.targets[0])
        binary = given if given.is_file() else options.srcdir / given
    else:
        raise InputError("give the deployed program: -t BINARY")
    if not binary.is_file():
        raise InputError(f"TARGET {binary}: no such file")
    return binary.resolve()


def _go_binary(path: Path) -> GoBinary:
    try:
        return GoBinary(path)
    except NotGo as e:
        raise Refused([(path.name, str(e))]) from None


_COMPARED = (".text", ".rodata", ".noptrdata", ".data")


def derived_path(module: str, name: str, pkg: str) -> str:
    """Where the copy of `pkg` lives in the plugin: under MODULE/patchbuild_NAME, its path in the module
    kept (so `internal` packages stay importable)."""
    rel = pkg[len(module):].lstrip("/")
    return f"{module}/patchbuild_{name}" + (f"/{rel}" if rel else "")


_CLOSURE = re.compile(r"^(.*?)((?:\.func\d+)+(?:\.\d+)*)$")


def closure_parent(func: str) -> str | None:
    """The function a closure belongs to (F for F.func1, F.func1.2), None for other functions."""
    m = _CLOSURE.match(func)
    return m.group(1) if m else None


def _package_of(func: str) -> str:
    """The package path of a function symbol: example.com/a/b.(*T).m -> example.com/a/b."""
    slash = func.rfind("/", 0, func.find("(") if "(" in func else len(func))
    dot = func.find(".", slash + 1)
    return func[:dot]


def _explain(func: GoFunction | None, hunks) -> list[Explanation]:
    """The hunks whose changed lines the function's code comes from (its own lines, or an inlined callee's:
    the listing gives each instruction's source position)."""
    found = []
    for i, hunk in enumerate(hunks, 1):
        lines = sorted({line for file, line in (func.lines if func else ()) if same_file(file, hunk.path)}
                       & hunk.new_side)
        if lines:
            found.append(Explanation(i, "code from line" + ("s " if len(lines) > 1 else " ")
                                     + ", ".join(map(str, lines))))
    return found


class _GoBuild(StepTimes):
    def __init__(self, options: BuildOptions, name: str, scratch: Path, binary: Path):
        super().__init__()
        self.o, self.name, self.scratch, self.binary = options, name, scratch, binary
        self.src = options.srcdir.resolve()
        self.env = go_environment(scratch)
        self.objects: list[ObjectReport] = []
        self.info: BuildInfo | None = None
        self.listings: tuple[dict[str, GoFunction], dict[str, GoFunction]] = ({}, {})  # original, patched
        self.build_id: str | None = None

    def run(self) -> BuildResult:
        with internal_error_reported(lambda message: self._report("error", message)):
            return self._run()

    def _run(self) -> BuildResult:
        o, progress = self.o, self.o.progress
        check_patch(o.patches[0], self.src)
        progress.step("reading the deployed binary's build info")
        toolchain = toolchain_version(self.env)
        info = self.info = read_build_info(self.binary, self.env)
        self.env.update(info.env)
        if toolchain != info.go_version:
            raise Refused([(self.binary.name, f"built with {info.go_version}; the Go toolchain here is {toolchain} "
                                              "(the fix must be built by the same release)")])
        deployed = _go_binary(self.binary)
        self.build_id = deployed.build_id()
        if not deployed.fingerprints():
            raise Refused([(self.binary.name, "cannot load a fix: the program does not import the patch-build "
                                              "agent (patchbuild.local/go/agent), nor the plugin package")])
        module = go_list("-m", self.src, self.env)[0]["Path"]
        if module != info.main_module:
            raise InputError(f"{self.binary}: built from module {info.main_module}, SRCDIR is module {module}")

        if (self.src / f"patchbuild_{self.name}").exists():
            raise InputError(f"SRCDIR {self.o.srcdir} has a patchbuild_{self.name} of its own, where the fix's "
                             "plugin is built: give the patch another name (-n)")
        progress.step("building original")
        rebuilt = self.scratch / "original"
        self._timed("original build", run_go, ["build", *info.build_args(), "-o", os.fspath(rebuilt),
                                               info.main_package],
                    self.src, self.env, "original build", self.scratch / "build-original.log")
        self._check_deployed(rebuilt)
        # the listing's -S is recorded in the build info, which moves the data: a build of its own
        args = ["build", *info.build_args(), info.listing_flag(f"{module}/..."), "-o", os.devnull]
        original = parse_listing(self._timed("original build", run_go, [*args, info.main_package], self.src,
                                             self.env, "original build", self.scratch / "listing-original.log").stderr)

        progress.step("applying patches", total=len(o.patches))
        tree = self.scratch / "src"
        self._timed("copy", copy_tree, self.src, tree)
        touched: list[str] = []
        for patch in o.patches:
            touched += [f for f in apply_patch(patch, tree) if f not in touched]
            progress.advance(patch.name)
        overlay = {os.fspath(self.src / f): os.fspath(tree / f) if (tree / f).exists() else "" for f in touched}

        progress.step("building patched")
        overlay_file = self._write_overlay(overlay, "patched")
        patched = parse_listing(self._timed("patched build", run_go, [*args, "-overlay", overlay_file,
                                                                      info.main_package],
                                            self.src, self.env, "patched build",
                                            self.scratch / "listing-patched.log").stderr)

        self.listings = (original, patched)
        changed, new = changed_functions(original, patched)
        changed = [f for f in changed if not f.endswith(".init")]  # package initialisation: gocopy decides
        packages = sorted({_package_of(f) for f in changed + new})
        problems = self._refusals(changed, new, patched, packages, module)
        if problems:
            raise self._refuse(problems, changed, new)
        # every package the patch touches is checked (a changed initial value changes no function)
        touched_pkgs = self._packages_of(touched, tree)
        progress.step(f"copying {len(packages)} package(s) under patchbuild_{self.name}")
        checked = {pkg: derived_path(module, self.name, pkg) for pkg in sorted(set(packages) | touched_pkgs)}
        copy_files = self._copies(checked, tree, changed, new)
        if not changed:
            message = "no functional change: no function's code changed" + (
                f" (new only: {', '.join(new)})" if new else "")
            self._report("no-change", message)
            raise NoChange(message)
        copies = {pkg: checked[pkg] for pkg in packages}
        overlay.update({dst: src for pkg in packages for dst, src in copy_files[pkg].items()})
        main_go = self.scratch / "plugin_main.go"
        imports = "\n".join(f'\tp{i} "{path}"' for i, path in enumerate(copies.values()))
        keep = ", ".join(f"p{i}.PatchbuildKeep" for i in range(len(copies)))
        main_go.write_text(f"// The fix {self.name}, built by patch-build.\npackage main\n\nimport (\n{imports}\n)\n\n"
                           f"var PatchbuildKeep = []any{{{keep}}}\n")
        plugin_dir = self.src / f"patchbuild_{self.name}"
        overlay[os.fspath(plugin_dir / "zz_patchbuild_main.go")] = os.fspath(main_go)

        progress.step("building the plugin")
        plugin = self.scratch / f"{self.name}.so"
        self._timed("plugin build", run_go, ["build", *info.build_args(plugin=True), "-buildmode=plugin", "-overlay",
                                             self._write_overlay(overlay, "plugin"), "-o", os.fspath(plugin),
                                             f"./patchbuild_{self.name}"],
                    self.src, self.env, "plugin build", self.scratch / "build-plugin.log")
        return self._finish(plugin, copies, changed, new)

    def _write_overlay(self, overlay: dict[str, str], what: str) -> str:
        path = self.scratch / f"overlay-{what}.json"
        path.write_text(json.dumps({"Replace": dict(sorted(overlay.items()))}, indent=1))
        return os.fspath(path)

    def _check_deployed(self, rebuilt: Path) -> None:
        """The deployed binary must run the code SRCDIR builds: the rebuild's code and data are the deployed
        one's (Go builds are reproducible: same sources, flags, toolchain and directory, same bytes)."""
        deployed = _go_binary(self.binary)
        ours = _go_binary(rebuilt)
        if any(ours.section_data(name) != deployed.section_data(name) for name in _COMPARED):
            message = (f"the deployed {self.binary.name} does not run the code SRCDIR builds with its flags "
                       "(another source, flags or toolchain)")
            self._report("refused", message)
            raise PatchBuildError(message)

    def _refusals(self, changed: list[str], new: list[str], patched: dict[str, GoFunction], packages: list[str],
                  module: str) -> list[tuple[str, str]]:
        problems = []
        for pkg in packages:
            if pkg == "main":
                problems += [(f, "in package main, which a plugin cannot hold: move the code into a package")
                             for f in changed + new if _package_of(f) == pkg]
            elif not (pkg == module or pkg.startswith(module + "/")):
                problems.append((pkg, f"not a package of module {module}: only the module's own packages are copied"))
        for f in changed + new:
            for sym in identity_uses(patched[f], _package_of(f)):
                problems.append((f, f"uses the identity of a type of its package ({sym}: an interface conversion, "
                                    "type assertion or reflection), which the fix's copy of the package cannot share"))
        deployed = _go_binary(self.binary)
        for f in changed:
            if f not in deployed.functions:
                continue  # inlined wherever it is used: its callers changed with it
            size = stack_check_size(deployed.code(f)[:32])
            if size < JUMP_SIZE:
                problems.append((f, "too small for the jump: it does not start with a stack-bound check "
                                    "(a leaf function the compiler made nosplit)"))
        return problems

    def _packages_of(self, files: list[str], tree: Path) -> set[str]:
        """The module's packages (not main) holding the Go files the patches touch."""
        dirs = sorted({os.path.dirname(f) or "." for f in files if f.endswith(".go") and (tree / f).exists()})
        out = set()
        for d in dirs:
            if not (self.src / d).is_dir():
                continue  # a package the patch adds: nothing runs it yet
            for pkg in go_list(f"./{d}", self.src, self.env):
                if pkg.get("Name") != "main":
                    out.add(pkg["ImportPath"])
        return out

    def _copies(self, copies: dict[str, str], tree: Path, changed, new) -> dict[str, dict[str, str]]:
        """Run gocopy for each package: the refusals it finds, else overlay entries of the copy's files."""
        gocopy = self.scratch / "gocopy"
        run_go(["build", "-o", os.fspath(gocopy), "./gocopy"], GO_SOURCES, self.env, "building gocopy")
        extra = [f"-tags={self.info.flags['-tags']}"] if "-tags" in self.info.flags else []
        out: dict[str, dict[str, str]] = {}
        problems = []
        for pkg, copy in copies.items():
            listed = go_list(pkg, self.src, self.env, extra)[0]
            exports = self.scratch / "exports.txt"
            exports.write_text(run_go(["list", "-export", "-deps", *extra, "-f", "{{.ImportPath}}={{.Export}}", pkg],
                                      self.src, self.env, f"go list -export {pkg}").stdout)
            rel = os.path.relpath(listed["Dir"], self.src)
            dest = self.scratch / "copies" / rel
            result = subprocess.run([os.fspath(gocopy), "-path", pkg, "-orig", listed["Dir"],
                                     "-patched", os.fspath(tree / rel), "-files", ",".join(listed["GoFiles"]),
                                     "-exports", os.fspath(exports), "-out", os.fspath(dest)],
                                    capture_output=True, text=True, env=self.env)
            if result.returncode != 0:
                raise InputError(f"cannot copy package {pkg}: {result.stderr.strip()}")
            refused = [(f"{pkg}.{name}", reason) for name, reason in json.loads(result.stdout)["refused"]]
            if refused:  # gocopy wrote nothing
                problems += refused
                continue
            target_dir = self.src / copy[len(self.info.main_module):].lstrip("/")
            out[pkg] = {os.fspath(target_dir / file): os.fspath(dest / file) for file in sorted(os.listdir(dest))}
        if problems:
            raise self._refuse(problems, changed, new)
        return out

    def _finish(self, plugin: Path, copies: dict[str, str], changed: list[str], new: list[str]) -> BuildResult:
        funcs, binds, problems = [], [], []
        deployed = _go_binary(self.binary)
        built = _go_binary(plugin)
        mine, theirs = built.fingerprints(), deployed.fingerprints()
        for pkg in sorted(mine):
            if pkg in theirs and mine[pkg] != theirs[pkg]:
                problems.append((pkg, "the plugin's copy of this package differs from the program's (plugin.Open "
                                      "would refuse it): built from other sources or flags"))
        for f in changed:
            if f not in deployed.functions or closure_parent(f) in changed:
                continue  # inlined everywhere; or a closure of a replaced function: the new one has its own
            pkg = _package_of(f)
            new_name = copies[pkg] + f[len(pkg):]
            if new_name not in built.functions:
                problems.append((f, f"its new version {new_name} is not in the plugin"))
                continue
            funcs.append(GoFunc(f, new_name))
        replaced = {f.name for f in funcs}
        for pkg, copy in copies.items():
            for sym in sorted(built.functions):
                if not sym.startswith(copy + "."):
                    continue
                host = pkg + sym[len(copy):]
                if host in deployed.functions and host not in replaced and host not in new \
                        and closure_parent(host) not in changed and built.functions[sym].size >= BIND_SIZE:
                    # (a replaced function's closures may be numbered anew: they stay the plugin's own)
                    binds.append(GoBind(sym, host))
        if problems:
            raise self._refuse(problems, changed, new)
        if not funcs:
            message = "no functional change the program can take: the changed functions are not in the deployed binary"
            self._report("no-change", message)
            raise NoChange(message)
        module = self.o.outdir / f"{self.name}{SUFFIX}"
        self.o.outdir.mkdir(parents=True, exist_ok=True)
        patch = GoPatch(self.name, {"name": self.binary.name, "build_id": self.build_id or "",
                                    "go_version": self.info.go_version},
                        f"{self.info.main_module}/patchbuild_{self.name}", funcs=funcs, binds=binds)
        write_gopatch(module, patch, plugin.read_bytes())
        self._objects(changed, new, [])
        reports = self._report("built", f"{len(funcs)} function(s) replaced", module)
        return BuildResult(module=module, report_json=reports[0], name=self.name, kind="go",
                           functions=[f.name for f in funcs], timings=dict(self.timings), extra_reports=reports[1:])

    def _objects(self, changed: list[str], new: list[str], problems: list[tuple[str, str]]) -> None:
        by_pkg: dict[str, ObjectReport] = {}
        for f in sorted(set(changed) | set(new)) + [p for p, _ in problems]:
            pkg = _package_of(f) if "." in f else f
            by_pkg.setdefault(pkg, ObjectReport(objname=self.binary.name, original=pkg, patched=pkg))
        hunks = read_hunks(self.o.patches)
        original, patched = self.listings
        for status, names in (("changed", changed), ("new", new)):
            for f in names:
                obj = by_pkg[_package_of(f)]
                old_func, new_func = original.get(f), patched.get(f)
                obj.functions.append(Function(
                    f, status, old_size=old_func.size if old_func else None,
                    new_size=new_func.size if new_func else None,
                    reasons=["new function, in the plugin"] if status == "new" else [],
                    explained_by=_explain(new_func, hunks)))
                rows = side_by_side(disassembly(old_func), disassembly(new_func))
                obj.diffs.append(FunctionDiff(f, rows[:MAX_ROWS], truncated=len(rows) > MAX_ROWS))
        for sym, reason in problems:
            pkg = _package_of(sym) if "." in sym else sym
            by_pkg.setdefault(pkg, ObjectReport(objname=self.binary.name, original=pkg, patched=pkg))
            by_pkg[pkg].rejected.append(Problem(sym, reason))
        self.objects = [by_pkg[k] for k in sorted(by_pkg)]

    def _refuse(self, problems: list[tuple[str, str]], changed: list[str], new: list[str]) -> Refused:
        err = Refused(problems)
        self._objects(changed, new, problems)
        self._report("refused", f"unsupported change: {err}")
        return err

    def _report(self, status: str, message: str, module: Path | None = None) -> list[Path]:
        details = {"language": "go"}
        if self.info is not None:
            details["go"] = self.info.go_version
            details["build flags"] = " ".join(self.info.build_args()) or "(none)"
        report = build_report(self.name, "user", self.objects, status=status, message=message,
                              patches=self.o.patches, targets=[Target(self.binary.name, self.build_id)],
                              module=module, relative_to=self.src, details=details)
        return write_reports(report, self.o.outdir, self.name)
