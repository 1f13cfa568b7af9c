"""Differ test cases: fixture pairs of fixtures/diff, compiled and diffed once per session.

A fixture is a folder of fixtures/diff/ with orig.c/patched.c (or .cpp), optional extra units of a test
program (for the link test) and fixture.json. Both versions are compiled under the same name (unit.c), as a
build of one tree before and after the fix would. fixture.json:
  summary    what the pair covers
  cflags     compiler flags besides -ffunction-sections -fdata-sections (-O0/-O2/-O3, -fPIC, -g)
  no_section_flags  (optional) compile without -ffunction-sections -fdata-sections
  kernel     (optional) diff in kernel mode (--kernel)
  exit       expected exit code of patch-diff (0, 1 refused, 3 no change)
  changed    exact set of changed functions (names in the patched object)
  new        exact set of new functions
  reject     (exit 1) the symbol the error must name
  clones / absent / sections / groups / symbols_orig / symbols_patched
             what the compiler must (not) have produced, so the fixture tests what it says it does
  references patterns (fnmatch; {obj} = objname) that must be undefined symbols of OUT.o
  reference_types  {name: readelf type} of such undefined symbols (a TLS variable must stay TLS)
  included / not_defined   patterns that must / must not be defined in OUT.o
  out_sections  {name: size} of sections OUT.o must hold (kernel special sections cut down)
  out_sections_present  patterns of sections OUT.o must hold
  link       {"units": [...], "orig_output": ..., "patched_output": ...} for the link test
"""
from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from support import elfcheck, toolchain

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "fixtures" / "diff"
OBJNAME = "prog"  # --objname of every run: the link test's program is called this


def fixture_names(with_key: str | None = None) -> list[str]:
    names = sorted(p.parent.name for p in FIXTURES.glob("*/fixture.json"))
    if with_key:
        names = [n for n in names if with_key in load_manifest(n)]
    return names


def load_manifest(name: str) -> dict:
    return json.loads((FIXTURES / name / "fixture.json").read_text())


def patch_diff_command() -> list[str]:
    """The installed console script; from a source tree without it, the same Typer app."""
    exe = shutil.which("patch-diff")
    if exe:
        return [exe]
    return [sys.executable, "-m", "patch_build.diffobj"]


def names_of(entries) -> set[str]:
    """Function names from a report list: plain strings or objects with a `name`."""
    return {e if isinstance(e, str) else e["name"] for e in entries}


def expand(pattern: str) -> str:
    return pattern.replace("{obj}", OBJNAME)


def matching(pattern: str, names) -> list[str]:
    return [n for n in names if fnmatch.fnmatchcase(n, expand(pattern))]


def assert_one_line_error(proc: subprocess.CompletedProcess) -> str:
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert err, "no error message on stderr"
    assert len(err.splitlines()) == 1, f"error is not one line:\n{proc.stderr}"
    return err


def assert_valid_object(path: Path, workdir: Path) -> None:
    assert path.is_file(), f"{path} was not written"
    problems = elfcheck.readelf_problems(path)
    assert not problems, f"readelf -aW {path.name}:\n" + "\n".join(problems)
    problems = elfcheck.ld_relocatable_problems(path, workdir)
    assert not problems, f"ld -r {path.name}:\n" + "\n".join(problems)


@dataclass
class DiffRun:
    returncode: int
    stdout: str
    stderr: str
    out: Path
    report: dict | None
    workdir: Path
    result: object = None  # the DiffResult, for API runs


@dataclass
class Fixture:
    name: str
    manifest: dict
    workdir: Path

    @property
    def dir(self) -> Path:
        return FIXTURES / self.name

    def source(self, stem: str) -> Path:
        found = sorted(self.dir.glob(f"{stem}.c*"))
        assert len(found) == 1, f"{self.dir}: expected one {stem}.c or {stem}.cpp"
        return found[0]

    @property
    def kernel(self) -> bool:
        return bool(self.manifest.get("kernel"))

    @property
    def cplusplus(self) -> bool:
        return self.source("orig").suffix != ".c"

    @property
    def unit_name(self) -> str:
        """Both versions are compiled as `unit.c` (or .cpp) from a folder of their own, like one source file
        of a tree before and after the fix: same __FILE__, same STT_FILE name."""
        return "unit" + self.source("orig").suffix

    def compile_job(self, stem: str) -> tuple[str, Path, list[str], Path, bool]:
        """compile_object arguments compiling STEM (orig or patched) as the unit."""
        srcdir = self.workdir / stem
        srcdir.mkdir(exist_ok=True)
        shutil.copyfile(self.source(stem), srcdir / self.unit_name)
        return (self.unit_name, self.workdir / f"{stem}.o", self.manifest["cflags"], srcdir,
                not self.manifest.get("no_section_flags", False))

    @cached_property
    def orig(self) -> Path:
        return toolchain.compile_object(*self.compile_job("orig"))

    @cached_property
    def patched(self) -> Path:
        return toolchain.compile_object(*self.compile_job("patched"))

    @cached_property
    def diff(self) -> DiffRun:
        """The differ run once through its Python API (the CLI costs seconds of imports per run;
        test_diff_cli.py checks that the CLI agrees): exit code as patch-diff maps it, the report, OUT.o."""
        from patch_build.diffobj.diff import DiffOptions, diff_objects

        out = self.workdir / "out.o"
        result = diff_objects(str(self.orig), str(self.patched), DiffOptions(kernel=self.kernel, objname=OBJNAME))
        if result.errors:
            code, stderr = 1, "".join(f"patch-diff: error: {e.symbol}: {e.reason}\n" for e in result.errors)
        elif not result.has_changes:
            code, stderr = 3, "no functional change\n"
        else:
            code, stderr = 0, ""
            result.write(str(out))
        report = json.loads(json.dumps(result.report()))  # as --report would write it
        return DiffRun(code, "", stderr, out, report, self.workdir, result)

    @cached_property
    def program(self) -> Path:
        """The original program: orig.o plus the fixture's other units, non-PIE, named OBJNAME."""
        units = [toolchain.compile_object(self.dir / u, self.workdir / (Path(u).stem + ".unit.o"),
                                          self.manifest["cflags"]) for u in self.manifest["link"]["units"]]
        progdir = self.workdir / "program"
        progdir.mkdir(exist_ok=True)
        return toolchain.link_program([self.orig, *units], progdir / OBJNAME, self.cplusplus)


class Fixtures:
    """Session cache: each fixture is compiled and diffed at most once."""

    def __init__(self, root: Path):
        self.root = root
        self._cache: dict[str, Fixture] = {}

    def compile_all(self, names: list[str]) -> None:
        """Compile the objects of NAMES in parallel up front (they are cached like lazily built ones)."""
        fxs = [self[n] for n in names]
        jobs = [fx.compile_job(stem) for fx in fxs for stem in ("orig", "patched") if stem not in fx.__dict__]
        toolchain.compile_objects(jobs)
        for fx in fxs:
            fx.__dict__.setdefault("orig", fx.workdir / "orig.o")
            fx.__dict__.setdefault("patched", fx.workdir / "patched.o")

    def __getitem__(self, name: str) -> Fixture:
        if name not in self._cache:
            workdir = self.root / name
            workdir.mkdir()
            self._cache[name] = Fixture(name, load_manifest(name), workdir)
        return self._cache[name]
