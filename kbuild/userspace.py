"""`build_user_patch`: from a fix.patch and a program's source tree to NAME.kpatch (issue 3).

scratch copy -> original build (wrapped compilers record objects) -> snapshot -> apply patches -> rebuild ->
pair changed objects with their originals -> diff each against its target (parallel) -> check the deployed
binary runs the originals -> link NAME.kpatch -> NAME.report.json.
"""
from __future__ import annotations

import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from patch_build.common.buildcmd import build_environment, run_build
from patch_build.common.errors import InputError, NoChange, PatchBuildError, Refused
from patch_build.common.messages import internal_error_reported
from patch_build.diffobj.read import read_object
from patch_build.kbuild.buildreport import build_file_warning, write_build_report
from patch_build.kbuild.deployed import DeployedBinary, load_binary
from patch_build.kbuild.lto import describe, diff_linked, lto_unit
from patch_build.kbuild.timing import StepTimes
from patch_build.kbuild.options import BuildOptions, BuildResult, module_name
from patch_build.kbuild.tree import apply_patch, build_files, check_patch, copy_tree, in_scratch
from patch_build.kbuild.units import UnitDiff, UnitJob, diff_unit
from patch_build.kbuild.wrapper import CompiledObject, install_wrappers, read_log
from patch_build.linker.user import link_user_module
from patch_build.patchformat.integrity import load_private_key
from patch_build.patchformat.module import Target, read_module
from patch_build.report.explain import UnitSources, all_left_out_message, left_out_note, unexplained_changes
from patch_build.report.patches import line_shifts, read_hunks, touched_files


# Files whose regeneration by the build changes code: sources, headers and what they include.
GENERATED_SUFFIXES = {".c", ".h", ".cc", ".cpp", ".cxx", ".hh", ".hpp", ".hxx", ".inc", ".def", ".S", ".s"}


def _validate(options: BuildOptions) -> None:
    if not options.srcdir.is_dir():
        raise InputError(f"SRCDIR {options.srcdir}: no such directory")
    if not options.patches:
        raise InputError("no PATCH given")
    for patch in options.patches:
        if not patch.is_file():
            raise InputError(f"patch {patch}: no such file")
    if not options.targets:
        raise InputError("no TARGET given (-t FILE, relative to SRCDIR)")
    for target in options.targets:
        if os.path.isabs(target) or ".." in Path(target).parts:
            raise InputError(f"TARGET {target}: must be a path inside SRCDIR, relative to it")
    if options.target_binaries and len(options.target_binaries) != len(options.targets):
        raise InputError(f"{len(options.target_binaries)} --target-binary for {len(options.targets)} TARGET: "
                         "give one per TARGET, in the same order")
    for binary in options.target_binaries:
        if not binary.is_file():
            raise InputError(f"--target-binary {binary}: no such file")
    if options.sign_cert is not None:
        raise InputError("--sign-cert is for kernel modules only (SRCDIR is not a Linux tree)")
    if options.sign_key is not None:
        load_private_key(options.sign_key)  # a bad key found before a long build


def build_user_patch(options: BuildOptions) -> BuildResult:
    """Build OUTDIR/NAME.kpatch and OUTDIR/NAME.report.json. Raises a PatchBuildError subclass whose
    exit_code is the command's; the scratch tree is removed unless options.debug or options.skip_cleanup."""
    _validate(options)
    name = module_name(options)
    return in_scratch(options, name, lambda scratch: _Build(options, name, scratch).run())


class _Build(StepTimes):
    def __init__(self, options: BuildOptions, name: str, scratch: Path):
        super().__init__()
        self.o = options
        self.name = name
        self.scratch = scratch
        self.tree = scratch / "src"
        self.jobs = options.jobs or os.cpu_count() or 1
        self.progress = options.progress
        self.build_files: list[str] = []  # the build-system files the patches change
        self.generated: list[str] = []  # source files the patched build wrote that no patch touches

    def run(self) -> BuildResult:
        with internal_error_reported(lambda message: self._report("error", message)):
            return self._run()

    def _run(self) -> BuildResult:
        o, progress = self.o, self.progress
        check_patch(o.patches[0], o.srcdir)  # the common failure, found before a long build
        self._check_build_files()
        progress.step("copying source tree")
        self._timed("copy", copy_tree, o.srcdir.resolve(), self.tree)
        log = self.scratch / "objects.log"
        env = build_environment(install_wrappers(self.scratch / "wrap", log, dict(os.environ),
                                                 (self.tree, o.srcdir.resolve())), self.jobs)

        progress.step("building original")
        self._timed("original build", run_build, o.build_cmd, self.tree, env, self.scratch / "build-original.log",
                    "original build")
        originals, log_end = read_log(log)
        if not originals:
            raise InputError(f"`{o.build_cmd}` compiled nothing through the compiler wrapper (does the build call "
                             "the compiler by an absolute path?)")
        link_diff = self._detect_lto(originals) or o.link_diff
        snapshots = self._snapshot(originals)
        binaries = self._deployed_binaries()
        links = self._snapshot_links() if link_diff else []

        progress.step("applying patches", total=len(o.patches))
        for patch in o.patches:
            apply_patch(patch, self.tree)
            progress.advance(patch.name)

        progress.step("building patched")
        patched_build_start = time.time_ns()
        self._timed("patched build", run_build, o.build_cmd, self.tree, env, self.scratch / "build-patched.log",
                    "patched build")
        rebuilt, _ = read_log(log, log_end)
        self.generated = self._generated(patched_build_start)

        start = time.monotonic()
        changed = self._changed(originals, rebuilt, snapshots)
        if link_diff:
            units = self._diff_links(links, binaries)
        else:
            jobs = self._jobs(changed, originals, snapshots, binaries)
            progress.step(f"diffing {len(jobs)} object{'s' if len(jobs) != 1 else ''}", total=len(jobs))
            units = self._diff(jobs)
        self.timings["diff"] = time.monotonic() - start
        return self._finish(units, binaries)

    def _check_build_files(self) -> None:
        """A patch that changes the build system runs its code here: a warning, or with --no-build-changes a
        refusal before anything is built."""
        self.build_files = build_files(self.o.patches, self.o.build_cmd)
        if self.build_files and self.o.no_build_changes:
            err = Refused([(path, "a build file, and --no-build-changes refuses patches that change the build "
                                  "system") for path in self.build_files])
            self._report("refused", str(err))
            raise err
        for path in self.build_files:
            self.progress.note(f"warning: {build_file_warning(path)}")

    def _report(self, status: str, message: str, units: list[UnitDiff] = (), binaries: list[DeployedBinary] = (),
                module: Path | None = None) -> list[Path]:
        return self._timed("report", write_build_report, self.o.outdir, self.name, status, message, units, binaries,
                           self.o.patches, module, self.tree, self.build_files, self.generated)

    def _unexplained_mismatches(self, units: list[UnitDiff]) -> list[str]:
        """The functions the deployed binary runs otherwise that no hunk explains (a generated build id...)."""
        hunks = read_hunks(self.o.patches)
        found = []
        for u in units:
            if not u.mismatched:
                continue
            left_out, _ = unexplained_changes(u.report, UnitSources(hunks, self.tree, u.source, tuple(self.generated)))
            names = {c["old_name"] for c in left_out}
            found += [f"{u.objname}:{m.split(' ', 1)[0]}" for m in u.mismatched if m.split(" ", 1)[0] in names]
        return found

    def _generated(self, since_ns: int) -> list[str]:
        """Source files the patched build wrote (a version or build-id header, redis's release.h) that no patch
        touches: the likely cause of a change no hunk explains."""
        patched = {p for patch in self.o.patches for p in touched_files(patch)}
        found = []
        for root, dirs, files in os.walk(self.tree):
            dirs[:] = sorted(d for d in dirs if d not in (".git", ".hg", ".svn"))
            for name in sorted(files):
                path = Path(root, name)
                rel = self._rel(path)
                if path.suffix in GENERATED_SUFFIXES and rel not in patched and not path.is_symlink() \
                        and path.stat().st_mtime_ns >= since_ns:
                    found.append(rel)
        return found

    def _snapshot(self, originals: dict[Path, CompiledObject]) -> dict[Path, Path]:
        """Copy each recorded object aside before the patched build overwrites it."""
        snap_dir = self.scratch / "orig"
        snap_dir.mkdir()
        snapshots = {}
        for i, path in enumerate(sorted(originals)):
            snapshots[path] = snap_dir / f"{i:05d}-{path.name}"
            shutil.copy2(path, snapshots[path])
        return snapshots

    def _deployed_binaries(self) -> list[DeployedBinary]:
        """Per TARGET: --target-binary, else SRCDIR's build of it, else (a copy of) the scratch original build's."""
        binaries = []
        for i, target in enumerate(self.o.targets):
            built = self.tree / target
            if not built.is_file():
                raise InputError(f"TARGET {target} was not produced by `{self.o.build_cmd}`")
            if self.o.target_binaries:
                path = self.o.target_binaries[i]
            elif (self.o.srcdir / target).is_file():
                path = self.o.srcdir / target
            else:
                path = self.scratch / "orig" / "targets" / f"{i}" / built.resolve().name
                path.parent.mkdir(parents=True)
                shutil.copy2(built.resolve(), path)
            binaries.append(load_binary(path))
        return binaries

    def _detect_lto(self, originals: dict[Path, CompiledObject]) -> bool:
        """Whether the original build compiled units for link-time optimisation (said in the step log): then
        only the link holds the code the program runs, and the build is diffed there."""
        units = [u for p in sorted(originals) if (u := lto_unit(originals[p], self._rel(originals[p].source)))]
        if units:
            self.progress.note(describe(units, len(originals)) + ": diffing the linked programs (link-diff)")
        return bool(units)

    def _snapshot_links(self) -> list[Path]:
        """Copy each TARGET of the original build aside (link-diff compares it with the patched link)."""
        links = []
        for i, target in enumerate(self.o.targets):
            links.append(self.scratch / "orig" / "linked" / f"{i}" / Path(target).name)
            links[-1].parent.mkdir(parents=True)
            shutil.copy2((self.tree / target).resolve(), links[-1])
        return links

    def _diff_links(self, links: list[Path], binaries: list[DeployedBinary]) -> list[UnitDiff]:
        self.progress.step(f"diffing {len(links)} linked program{'s' if len(links) != 1 else ''}", total=len(links))
        outputs = self.scratch / "out"
        outputs.mkdir()
        only_explained = UnitSources(read_hunks(self.o.patches), self.tree, None, tuple(self.generated)) \
            if self.o.only_explained else None
        units = []
        for i, (target, orig, binary) in enumerate(zip(self.o.targets, links, binaries)):
            try:
                units.append(diff_linked(target, orig, self.tree / target, binary,
                                         outputs / f"{i:05d}-{binary.name}.o", only_explained))
            except PatchBuildError as err:  # a link we cannot look into: refused, with the reason
                self._report("refused", str(err), units, binaries)
                raise
            self.progress.advance(target)
        return units

    def _changed(self, originals, rebuilt, snapshots) -> list[Path]:
        """The recorded objects the patched build changed. Every recorded object is compared, not only those
        the rebuild reported, so a unit rebuilt outside the wrapper is not missed."""
        new_units = sorted(p for p in rebuilt if p not in originals)
        if new_units:
            raise Refused([(self._rel(rebuilt[p].source), "new compilation unit: a patch can only change units "
                                                          "the target already has") for p in new_units])
        changed = [p for p in sorted(originals)
                   if p.is_file() and p.read_bytes() != snapshots[p].read_bytes()]
        if not changed:
            raise NoChange("no functional change: the patched build produced the same objects")
        return changed

    def _jobs(self, changed: list[Path], originals, snapshots, binaries: list[DeployedBinary]) -> list[UnitJob]:
        """One job per (changed object, target that links it)."""
        jobs, outputs = [], self.scratch / "out"
        outputs.mkdir()
        hunks = read_hunks(self.o.patches) if self.o.only_explained else []
        shifts = line_shifts(self.o.patches)
        for path in changed:
            obj = read_object(os.fspath(snapshots[path]))
            source = self._rel(originals[path].source)
            linked = [b for b in binaries if b.links(obj)]
            if not linked:
                self.progress.note(f"warning: {source} changed but is not linked into "
                                   f"{', '.join(b.name for b in binaries)}; skipped")
            for binary in linked:
                jobs.append(UnitJob(source=source, object_name=self._rel(path), orig=snapshots[path], patched=path,
                                    binary=binary.path, output=outputs / f"{len(jobs):05d}-{binary.name}-{path.name}",
                                    only_explained=UnitSources(hunks, self.tree, source, tuple(self.generated))
                                    if self.o.only_explained else None, line_shifts=shifts))
        if not jobs:
            raise NoChange("no functional change to the targets: the changed objects are not linked into "
                           + ", ".join(b.name for b in binaries))
        return jobs

    def _rel(self, path: Path) -> str:
        try:
            return os.fspath(path.relative_to(self.tree))
        except ValueError:
            return os.fspath(path)

    def _diff(self, jobs: list[UnitJob]) -> list[UnitDiff]:
        if self.jobs == 1 or len(jobs) == 1:
            units = []
            for job in jobs:
                units.append(diff_unit(job))
                self.progress.advance(job.source)
            return units
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=min(self.jobs, len(jobs)), mp_context=ctx) as pool:
            futures = [pool.submit(diff_unit, job) for job in jobs]
            units = []
            for job, future in zip(jobs, futures):
                units.append(future.result())
                self.progress.advance(job.source)
            return units

    def _finish(self, units: list[UnitDiff], binaries: list[DeployedBinary]) -> BuildResult:
        o = self.o
        for u in units:
            for name, cause in u.causes.items():
                self.progress.note(left_out_note(u.source, name, cause))
        errors = [(f"{u.source}: {sym}", reason) for u in units for sym, reason in u.errors]
        if errors:
            err = Refused(errors)
            self._report("refused", f"unsupported change: {err}", units, binaries)
            raise err
        mismatched = [f"{u.objname}: {m}" for u in units for m in u.mismatched]
        if mismatched:
            message = ("the deployed binary does not run the original code of: " + "; ".join(mismatched)
                       + " (built from other sources or flags?)")
            unexplained = [] if o.only_explained else self._unexplained_mismatches(units)
            if unexplained:
                message += (f"; no hunk of the patches explains the change of {', '.join(unexplained)}: "
                            "--only-explained leaves such functions out")
            self._report("refused", message, units, binaries)
            raise PatchBuildError(message)
        # Units with only new functions come along: other units of the patch call them.
        written = [u for u in units if u.output is not None]
        patched_targets = {u.objname for u in written if u.changed}
        linked = [u for u in written if u.objname in patched_targets]
        if not linked:
            left_out = [name for u in units for name in u.causes]
            if left_out:
                message = all_left_out_message(left_out)
            else:
                message = (f"no functional change: {', '.join(sorted({u.source for u in units}))} recompiled "
                           "differently, but no function or data changed")
            self._report("no-change", message, units, binaries)
            raise NoChange(message)

        self.progress.step("linking")
        start = time.monotonic()
        module = o.outdir / f"{self.name}.kpatch"
        link_user_module([u.output for u in linked], self.name,
                         [Target(b.name, b.build_id) for b in binaries if b.name in patched_targets],
                         module, self.scratch, load_private_key(o.sign_key) if o.sign_key else None)
        info = read_module(module)
        if info.problems:
            raise PatchBuildError(f"{module.name} is malformed: {'; '.join(info.problems)}")
        self.timings["link"] = time.monotonic() - start
        reports = self._report("built", f"{len(info.funcs)} function(s) replaced", units, binaries, module)
        return BuildResult(module=module, report_json=reports[0], name=self.name, kind="user", diffs=units,
                           functions=[f"{f.objname}:{f.name}" for f in info.funcs], timings=dict(self.timings),
                           extra_reports=reports[1:])
