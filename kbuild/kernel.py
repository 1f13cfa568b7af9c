"""`build_kernel_patch`: from fix.patch files and a Linux source tree to a livepatch module NAME.ko (issue 5).

Fast, kpatch-build without the two whole-kernel builds: prepare the tree once (`make olddefconfig prepare`
without what only a vmlinux link needs, kept for later runs), compile only the units the patches touch,
original then patched, with `-ffunction-sections -fdata-sections`, diff them in kernel mode against the
running kernel's symbols, and link the outputs with a generated hook against the kernel's headers
(linker.kernel). The patches are reverted whatever happens, so KSRC keeps its sources (it does keep the
objects kbuild made).

This module runs the steps in order; each lives with its job: the target kernel (`kernel_target`: release,
module names), the tree (`kernel_tree`: prepare, compile), the units (`kernel_units`), the running kernel's
symbols (`kernel_symbols`), the diff and the load-time checks (`kernel_diff`), the reports (`buildreport`).
"""
from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from patch_build.common.errors import InputError, NoChange, Refused
from patch_build.common.messages import internal_error_reported
from patch_build.kbuild.buildreport import write_kernel_report
from patch_build.kbuild.kernel_diff import callback_tables, diff_units
from patch_build.kbuild.kernel_symbols import KernelSymbols, read_exports
from patch_build.kbuild.kernel_target import check_module_name, kernel_release, livepatch_name, module_dirs
from patch_build.kbuild.kernel_tree import KernelTree
from patch_build.kbuild.kernel_units import Unit, assign_targets, collect, compile_units, touched_units
from patch_build.kbuild.modsign import read_signer, sign_file_tool, sign_module, signing_hash
from patch_build.kbuild.options import BuildOptions, BuildResult
from patch_build.kbuild.struct_sizes import struct_sizes
from patch_build.kbuild.timing import StepTimes
from patch_build.kbuild.tree import apply_patch, in_scratch, revert_patches
from patch_build.linker.kernel import link_kernel_module
from patch_build.report.explain import all_left_out_message


def build_kernel_patch(options: BuildOptions) -> BuildResult:
    """Build OUTDIR/NAME.ko and its reports (NAME.report.json/.md/.html). Raises a PatchBuildError subclass
    whose exit_code is the command's; a refused or change-less build writes only the reports."""
    _validate(options)
    name = livepatch_name(options)
    return in_scratch(options, name, lambda scratch: _KernelBuild(options, name, scratch).run())


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


class _KernelBuild(StepTimes):
    def __init__(self, options: BuildOptions, name: str, scratch: Path):
        super().__init__()
        self.o = options
        self.name = name
        self.scratch = scratch
        self.ksrc = options.srcdir.resolve()
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
        self.tree = KernelTree(self.ksrc, self.headers, options.jobs or os.cpu_count() or 1, scratch)
        self.module_dirs = module_dirs(self.release, options.system_map)
        check_module_name(name, self.release, self.module_dirs, self.progress)

    def run(self) -> BuildResult:
        # One build at a time per tree: builds compile and patch the same files in place.
        with open(self.ksrc / ".patch-build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return self._run()

    def _run(self) -> BuildResult:
        units: list[Unit] = []
        try:
            with internal_error_reported(lambda message: self._report(units, "error", message)):
                units.extend(self._timed("units", touched_units, self.o.patches, self.ksrc, self.progress))
                return self._build(units)
        except Refused as e:
            self._report(units, "refused", f"unsupported change: {e}")
            raise
        except NoChange as e:
            self._report(units, "no-change", str(e))
            raise

    def _build(self, units: list[Unit]) -> BuildResult:
        o, tree = self.o, self.tree
        symbols = self._timed("symbols", KernelSymbols, o.vmlinux, o.system_map, self.release, self.module_dirs,
                              self.scratch / "modules", self.progress)
        exports = self._timed("symbols", read_exports, self.headers, self.ksrc)
        self.progress.step("preparing the kernel tree")
        self._timed("prepare", tree.prepare, tree.config(o.config, self.release))
        sizes = self._timed("struct sizes", struct_sizes, self.ksrc, tree.env, tree.jobs, self.scratch)

        self.progress.step(f"building {len(units)} original unit(s)")
        self._timed("original build", compile_units, tree, units, "original")
        collect(units, "orig", self.ksrc, self.scratch)
        applied = []
        try:
            self.progress.step("applying patches", total=len(o.patches))
            for patch in o.patches:
                apply_patch(patch, self.ksrc)
                applied.append(patch)
                self.progress.advance(patch.name)
            self.progress.step(f"building {len(units)} patched unit(s)")
            self._timed("patched build", compile_units, tree, units, "patched")
            collect(units, "patched", self.ksrc, self.scratch)
        finally:
            revert_patches(applied, self.ksrc)
        assign_targets(tree, units, o.targets, self.progress)

        self.progress.step(f"diffing {len(units)} object(s)", total=len(units))
        self._timed("diff", diff_units, units, symbols, exports, sizes, o.patches, o.only_explained, self.ksrc,
                    self.scratch / "out", self.progress)
        return self._finish(units)

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
        if not any(u.diff.changed_functions or callback_tables(u.diff.output) for u in changed):
            raise NoChange("no function to replace and no livepatch callback: the patch only adds code nothing "
                           "running calls")
        self.progress.step("linking the livepatch module")
        module, self.klp_sections = self._timed("link", link_kernel_module, [u.output for u in changed], self.name,
                                                self.headers, self.scratch, not o.non_replace, self.tree.jobs,
                                                self.tree.env)
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
        """NAME.report.json/.md/.html in OUTDIR, also when the build is refused."""
        details = {"kernel release": self.release, "atomic replace": "no" if self.o.non_replace else "yes"}
        if self.klp_sections:
            details["livepatch relocation sections"] = ", ".join(self.klp_sections)
        if module is not None:
            details["module signature"] = self.signer.describe(self.sig_hash) if self.signer else "unsigned"
        return self._timed("report", write_kernel_report, self.o.outdir, self.name, status, message, units,
                           self.o.patches, self.ksrc, self.release, details, module)
