"""The differ's pipeline: read -> (kernel: split the dynamic debug table) -> correlate -> compare -> kpatch marks
-> check -> include -> special sections (and runtime constants) -> output.

`diff_objects` is the library entry point (patch-diff and patch-build call it); it returns a
`DiffResult` and raises `InputError` for inputs it cannot use. Refusals are data (`result.errors`): the
caller decides what to print and how to exit.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

from patch_build.common.errors import InputError
from patch_build.diffobj import checks, dyndbg, ehframe, kpatch_marks, names, runtime_const, special
from patch_build.diffobj.compare import Comparer, compare
from patch_build.diffobj.correlate import correlate
from patch_build.diffobj.include import Included, include
from patch_build.diffobj.line_numbers import LineShifts
from patch_build.diffobj.model import ObjectFile, OutputObject, Status, Symbol
from patch_build.diffobj.output import FunctionChange, ReferenceNamer, build_output, redirected_functions
from patch_build.diffobj.problems import Problem, Problems
from patch_build.diffobj.read import read_object
from patch_build.diffobj.struct_sizes import StructSizes
from patch_build.diffobj.targets import TargetResolver
from patch_build.diffobj.writer import write_object


@dataclass
class DiffOptions:
    kernel: bool = False
    objname: str | None = None  # default: vmlinux in kernel mode, else the patched object's stem
    sympos: Callable[[Symbol], int] | None = None  # position of an ORIGINAL local symbol in the target
    exported: set[str] | None = None  # kernel: exported names; others become .klp.sym references
    extern_objname: Callable[[str], str] | None = None  # kernel: object defining an undefined symbol
    # Globals the patch's other units define anew: references to them stay plain names, resolved in the module.
    provided: set[str] = field(default_factory=set)
    # Changed functions the patch must not replace (patch-build --only-explained): they count as unchanged.
    leave_out: frozenset[str] = frozenset()
    # The size of an ORIGINAL function in the running target, when known (it may differ from the scratch
    # build's: -ffunction-sections turns short jumps to other functions into long ones); the loader checks it.
    deployed_size: Callable[[Symbol], int | None] | None = None
    # The lines the patch moved (report.patches.line_shifts): code differing only in moved __LINE__ values is
    # unchanged. Without it, only kpatch's known reporting functions and "file:line" strings are recognised.
    line_shifts: LineShifts | None = None
    # Kernel: the sizes of the structs the special-section tables are made of, for the kernel diffed.
    struct_sizes: StructSizes = field(default_factory=StructSizes)


@dataclass
class DiffResult:
    orig_path: str
    patched_path: str
    objname: str
    kernel: bool
    changed_functions: list[FunctionChange] = field(default_factory=list)
    new_functions: list[str] = field(default_factory=list)
    included: list[Included] = field(default_factory=list)
    errors: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    output: OutputObject | None = None
    orig: ObjectFile | None = field(default=None, repr=False)
    patched: ObjectFile | None = field(default=None, repr=False)

    @property
    def has_changes(self) -> bool:
        return bool(self.changed_functions or self.new_functions or self.errors)

    def write(self, path: str) -> None:
        if self.errors or self.output is None:
            raise RuntimeError("refusing to write a patch object for a diff with errors or no changes")
        write_object(self.output, path)

    def report(self) -> dict:
        return {
            "orig": self.orig_path,
            "patched": self.patched_path,
            "objname": self.objname,
            "kernel": self.kernel,
            "changed_functions": [vars(c) for c in self.changed_functions],
            "new_functions": list(self.new_functions),
            "included": [vars(i) for i in self.included],
            "errors": [{"symbol": e.symbol, "reason": e.reason} for e in self.errors],
            "warnings": list(self.warnings),
        }


def _check_same_unit(orig: ObjectFile, patched: ObjectFile) -> None:
    named = [s for s in patched.symbols if s.is_defined and (s.is_function or s.is_object)]
    o_named = [s for s in orig.symbols if s.is_defined and (s.is_function or s.is_object)]
    if named and o_named and not any(s.twin is not None for s in named):
        raise InputError(f"{os.path.basename(orig.path)} and {os.path.basename(patched.path)} share no function or "
                         "data: they are not two builds of the same compilation unit")


def diff_objects(orig_path: str, patched_path: str, options: DiffOptions | None = None) -> DiffResult:
    return diff_models(read_object(orig_path), read_object(patched_path), options)


def diff_models(orig: ObjectFile, patched: ObjectFile, options: DiffOptions | None = None) -> DiffResult:
    """The pipeline on two models already read (objects, or linked programs read by `diffobj.linked`)."""
    orig_path, patched_path = orig.path, patched.path
    opts = options or DiffOptions()
    objname = opts.objname or ("vmlinux" if opts.kernel else os.path.splitext(os.path.basename(patched_path))[0])
    problems = Problems()
    if opts.kernel:
        for obj in (orig, patched):
            dyndbg.split(obj)
    o_res, p_res = TargetResolver(orig), TargetResolver(patched)

    correlate(orig, patched, problems, o_res, p_res, opts.leave_out)
    _check_same_unit(orig, patched)
    compare(orig, patched, Comparer(o_res, p_res, opts.line_shifts), opts.leave_out)
    dyndbg.forget_moved_lines(patched)
    for what in kpatch_marks.apply_ignores(patched, p_res, problems):
        problems.warn(f"{what} changed but is not patched: the patch says to ignore it (KPATCH_IGNORE_*)")
    checks.check(patched, opts.kernel, problems)
    callbacks, hooks = kpatch_marks.callback_sections(patched), kpatch_marks.hook_sections(patched)
    for sec in hooks if opts.kernel else callbacks:
        problems.add(sec.name, "livepatch callbacks need a kernel livepatch module to call them" if sec in callbacks
                     else "patch hooks (patch-hooks.h) are for user space: use KPATCH_*_CALLBACK in a kernel patch")
    inclusion = include(patched, p_res, problems, roots=callbacks if opts.kernel else hooks,
                        carried=special.CARRIED if opts.kernel else frozenset())
    if opts.kernel:
        special.filter_special_sections(patched, problems, opts.struct_sizes)
        runtime_const.rewrite_runtime_constants(patched, problems)
    else:
        ehframe.keep_unwind_info(patched, inclusion)

    namer = ReferenceNamer(opts.kernel, objname, opts.sympos, opts.exported, opts.extern_objname, opts.provided,
                           opts.deployed_size)
    result = DiffResult(orig_path, patched_path, objname, opts.kernel, orig=orig, patched=patched)
    result.changed_functions = redirected_functions(patched, namer)
    result.new_functions = [f.name for f in patched.functions()
                            if f.status is Status.NEW and not (f.parent and names.is_cold_piece(f.name))]
    result.included = inclusion.included
    result.errors = problems.errors
    result.warnings = problems.warnings
    if result.has_changes and not result.errors:
        result.output = build_output(patched, p_res, namer, result.changed_functions)
    return result
