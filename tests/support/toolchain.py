"""Compile and link with the real gcc/g++, as the build driver would (-ffunction-sections -fdata-sections)."""
from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SECTION_FLAGS = ["-ffunction-sections", "-fdata-sections"]


def compiler_for(source: str | os.PathLike) -> str:
    return "g++" if Path(source).suffix in (".cpp", ".cc", ".cxx") else "gcc"


def compile_object(source: str | os.PathLike, output: str | os.PathLike, cflags: list[str],
                   cwd: str | os.PathLike | None = None, section_flags: bool = True) -> Path:
    """Compile SOURCE (relative to CWD when given) into OUTPUT, by default one section per function/object."""
    sections = SECTION_FLAGS if section_flags else []
    cmd = [compiler_for(source), *cflags, *sections, "-c", str(source), "-o", str(Path(output).resolve())]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if run.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{run.stderr}")
    return Path(output)


def link_program(objects: list[str | os.PathLike], output: str | os.PathLike, cplusplus: bool = False) -> Path:
    """A non-PIE executable, so its addresses are those of its symbol table."""
    cmd = ["g++" if cplusplus else "gcc", "-no-pie", "-o", str(output), *map(str, objects)]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{run.stderr}")
    return Path(output)


def compile_objects(jobs: list[tuple]) -> list[Path]:
    """compile_object for each tuple of its arguments, as many at once as there are CPUs."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return list(pool.map(lambda job: compile_object(*job), jobs))
