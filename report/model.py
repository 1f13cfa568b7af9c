"""The report data model: what one patch build (or one `patch-diff`) found, as plain dataclasses.

`NAME.report.json` is `Report.to_dict()` written by `report.render.to_json`; `patch-report` reads it back
with `Report.from_dict` and renders Markdown or HTML from the same object, so every rendering shows the
same facts. Nothing here holds a host path or a wall-clock time: artifacts must be reproducible.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import types
import typing
from dataclasses import dataclass, field

from patch_build.common.errors import InputError
from patch_build.common.inputfile import MIB, read_input
from patch_build.diffobj.include import Included  # what a report lists as included and rejected is the differ's finding
from patch_build.diffobj.problems import Problem

SCHEMA_VERSION = 1
MAX_REPORT_SIZE = 64 * MIB

# Report.status values and the exit codes of docs/design.md they go with.
STATUS_EXIT = {"built": 0, "refused": 1, "failed": 2, "no-change": 3, "error": 4}


@dataclass
class Tool:
    name: str
    version: str


@dataclass
class Compiler:
    version: str  # e.g. "GCC: (Debian 12.2.0-14) 12.2.0", from the objects' .comment
    flags: list[str] = field(default_factory=list)


@dataclass
class Target:
    name: str  # file basename, `vmlinux` or a kernel module name
    build_id: str | None = None  # lowercase hex GNU build-id
    kernel_release: str | None = None


@dataclass
class PatchFile:
    name: str  # as given, relative; never an absolute host path
    sha256: str


@dataclass
class Artifact:
    path: str  # basename of the module
    sha256: str
    size: int


@dataclass
class Explanation:
    hunk: int  # the PatchHunk.id that explains the change
    how: str  # "own lines 9, 10" | "inlined callee scale" | "uses macro SCALE" | ...


@dataclass
class Function:
    name: str  # the symbol
    status: str  # "changed" | "new" | "included"
    reasons: list[str] = field(default_factory=list)
    old_name: str | None = None
    sympos: int = 0
    old_size: int | None = None
    new_size: int | None = None
    demangled: str | None = None  # C++: the name as written in the source
    explained_by: list[Explanation] = field(default_factory=list)  # the hunks that explain a changed/new function
    unexplained: str | None = None  # no hunk explains it: the likely cause
    left_out: bool = False  # unexplained and kept out of the module (--only-explained)


@dataclass
class ReportWarning:
    kind: str  # unexplained | left-out | inlined-callee-only | inlined-into-many | no-debug-info | differ | build-files
    symbol: str | None
    message: str


@dataclass
class FunctionRef:
    object: int  # 1-based position in Report.objects
    symbol: str


@dataclass
class PatchHunk:
    id: int  # 1-based, in patch order
    patch: str  # the patch file's name
    file: str  # the source file it changes, relative to the tree
    header: str  # "@@ -a,b +c,d @@ ..."
    lines: list[str]  # the hunk's lines with their ' ', '+', '-' prefixes
    functions: list[FunctionRef] = field(default_factory=list)  # the changed/new functions it explains


@dataclass
class DisasmRow:
    tag: str  # equal | replace | delete | insert
    old_offset: int | None = None
    old_text: str | None = None
    new_offset: int | None = None
    new_text: str | None = None


@dataclass
class FunctionDiff:
    name: str
    rows: list[DisasmRow] = field(default_factory=list)
    truncated: bool = False

    def changed_rows(self) -> int:
        """Rows of the side-by-side disassembly that differ: the instructions the patch changes, adds or
        removes (a new function's are all its own)."""
        return sum(1 for row in self.rows if row.tag != "equal")


@dataclass
class ObjectReport:
    objname: str  # the target object the functions live in (livepatch objname)
    original: str  # the compared objects: in a build, the unit's object relative to the tree (both sides)
    patched: str
    source: str | None = None  # the compilation unit's source file, relative to the source tree
    compiler: Compiler | None = None
    functions: list[Function] = field(default_factory=list)  # changed, then new, then included functions
    included: list[Included] = field(default_factory=list)  # everything the patch carries and why
    rejected: list[Problem] = field(default_factory=list)
    warnings: list[ReportWarning] = field(default_factory=list)
    diffs: list[FunctionDiff] = field(default_factory=list)

    def count(self, status: str) -> int:
        """Functions of `status` the module carries (left-out ones are not)."""
        return sum(1 for f in self.functions if f.status == status and not f.left_out)

    def function(self, symbol: str) -> Function | None:
        return next((f for f in self.functions if f.name == symbol), None)

    def display_name(self, symbol: str) -> str:
        """The readable (demangled) name of one of this object's functions, else the symbol itself."""
        return next((f.demangled for f in self.functions if f.name == symbol and f.demangled), symbol)


@dataclass
class Report:
    name: str
    kind: str  # user | kernel | diff (one patch-diff run)
    status: str  # a key of STATUS_EXIT
    tool: Tool
    message: str | None = None  # the build's one-line outcome (why it was refused, the internal error, ...)
    compilers: list[Compiler] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    patches: list[PatchFile] = field(default_factory=list)
    module: Artifact | None = None
    objects: list[ObjectReport] = field(default_factory=list)
    details: dict[str, str] = field(default_factory=dict)  # other facts of the build, shown as they are
    warnings: list[ReportWarning] = field(default_factory=list)  # about the whole build (build-files, ...)
    hunks: list[PatchHunk] = field(default_factory=list)  # the whole patch, hunk by hunk, linked to functions
    source_date_epoch: int | None = None  # the build's SOURCE_DATE_EPOCH, the only time a report carries
    schema: int = SCHEMA_VERSION

    def counts(self) -> dict[str, int]:
        return {
            "changed": sum(o.count("changed") for o in self.objects),
            "new": sum(o.count("new") for o in self.objects),
            "unexplained": sum(1 for o in self.objects for f in o.functions if f.unexplained is not None),
            "left_out": sum(1 for o in self.objects for f in o.functions if f.left_out),
            "included": sum(len(o.included) for o in self.objects),
            "rejected": sum(len(o.rejected) for o in self.objects),
            "warnings": len(self.warnings) + sum(len(o.warnings) for o in self.objects),
        }

    @property
    def exit_code(self) -> int:
        return STATUS_EXIT[self.status]

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        return {"schema": data.pop("schema"), **data}  # a reader sees the format version first

    @classmethod
    def from_dict(cls, data: dict) -> Report:
        """Rebuild a report from its JSON form; raises ValueError with a one-line reason when it is not one."""
        if not isinstance(data, dict) or "schema" not in data:
            raise ValueError("not a patch-build report (no schema field)")
        if data["schema"] != SCHEMA_VERSION:
            raise ValueError(f"report schema {data['schema']!r} is not supported (this tool reads {SCHEMA_VERSION})")
        report = _build(cls, data, "report")
        if report.status not in STATUS_EXIT:
            raise ValueError(f"report: unknown status {report.status!r}")
        return report


def read_report(path: str | os.PathLike) -> Report:
    """A saved NAME.report.json; InputError with a one-line reason naming the file when it is not one."""
    name = os.fspath(path)
    try:
        data = json.loads(read_input(path, "report", MAX_REPORT_SIZE).decode("utf-8"))
        return Report.from_dict(data)
    except UnicodeDecodeError:
        raise InputError(f"{name}: not a text file (not UTF-8)") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{name}: not JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise InputError(f"{name}: not a patch-build report (JSON nested too deeply)") from None
    except ValueError as e:  # the model's own checks, and numbers too long for Python to convert
        raise InputError(f"{name}: {e}") from None


@functools.lru_cache(maxsize=None)
def _hints(tp) -> dict:
    return typing.get_type_hints(tp)


def _build(tp, value, where: str):
    """Type-directed conversion of parsed JSON into the dataclasses above (checks as it goes)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _build(args[0], value, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object")
        _, item = typing.get_args(tp)
        return {str(k): _build(item, v, f"{where}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list")
        (item,) = typing.get_args(tp)
        return [_build(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object")
        hints = _hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in value:
                kwargs[f.name] = _build(hints[f.name], value[f.name], f"{where}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ValueError(f"{where}: missing field {f.name!r}")
        return tp(**kwargs)
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, tp)
    if not ok:
        raise ValueError(f"{where}: expected {tp.__name__}, got {type(value).__name__}")
    return value
