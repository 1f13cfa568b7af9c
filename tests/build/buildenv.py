"""Helpers of the build tests (imported by name: a `conftest` import would resolve to another folder's)."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "fixtures" / "build"


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    tmpdir: Path  # TMPDIR of the run: where its scratch tree lived

    @property
    def last_line(self) -> str:
        lines = [l for l in self.stderr.splitlines() if l.strip()]
        return lines[-1] if lines else ""

    def scratch_trees(self) -> list[Path]:
        return sorted(self.tmpdir.glob("patch-build-*"))


def copy_fixture(name: str, dest: Path) -> Path:
    tree = dest / name
    shutil.copytree(FIXTURES / name, tree, symlinks=True)
    return tree


def make(tree: Path, *args: str) -> None:
    """Build a fixture the ordinary way (no wrapper): what is deployed."""
    subprocess.run(["make", "-s", *args], cwd=tree, check=True, capture_output=True)


def tree_digest(tree: Path) -> str:
    """Names, modes, times and contents of every file under `tree`: equal digests mean an untouched tree."""
    h = hashlib.sha256()
    for path in sorted(tree.rglob("*")):
        st = path.lstat()
        h.update(f"{path.relative_to(tree)}:{st.st_mode}:{st.st_mtime_ns}".encode())
        if path.is_file() and not path.is_symlink():
            h.update(path.read_bytes())
    return h.hexdigest()


def tiny_kernel_tree(root: Path) -> tuple[Path, Path, Path]:
    """(KSRC, HEADERS, System.map): the least patch-build takes for a Linux tree, for what it decides before
    compiling anything. KSRC has kernel/fix.c (`int fixed(void) { return 1; }`) and a top Makefile."""
    ksrc, headers = root / "linux", root / "headers"
    (ksrc / "arch" / "x86").mkdir(parents=True)
    (ksrc / "kernel").mkdir()
    (ksrc / "Makefile").write_text("VERSION = 6\n")
    (ksrc / "Kbuild").write_text("")
    (ksrc / "kernel" / "fix.c").write_text("int fixed(void) { return 1; }\n")
    headers.mkdir()
    (headers / "Makefile").write_text("")
    (root / "System.map").write_text("ffffffff81000000 T _text\n")
    return ksrc, headers, root / "System.map"


def build_id(path: Path) -> str:
    out = subprocess.run(["readelf", "-nW", str(path)], check=True, capture_output=True, text=True).stdout
    return next(l.split(":", 1)[1].strip() for l in out.splitlines() if "Build ID:" in l)


def assert_one_line_error(run: Run, code: int, *fragments: str) -> None:
    """Exit `code`, no traceback, the error is the last line of stderr and names every fragment."""
    assert run.returncode == code, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    assert run.last_line.startswith("patch-build: error: "), run.stderr
    for fragment in fragments:
        assert fragment in run.last_line, run.stderr
