"""What a short command imports: nothing heavy it does not use (issue 11). `import lief` alone costs more than
a whole `patch-ctl list`; capstone, pyelftools and rich's help rendering cost a `--help` more than its own
work. Each command runs through its console-script entry point in a fresh interpreter, which then names the
libraries it ended up importing. Times are the benchmarks' business (bench/), not these tests'."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("lief", "capstone", "elftools", "rich", "pydantic", "cryptography", "jinja2")

# Runs the entry point with the given argv, then prints which of HEAVY were imported.
CHILD = """
import contextlib, io, json, sys
from patch_build.diffobj import entry
prog, args, heavy = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
sys.argv = [prog, *args]
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        getattr(entry, prog.replace("-", "_"))()
    except SystemExit as e:
        code = e.code
print(json.dumps({"code": code, "out": out.getvalue(),
                  "imported": sorted({m.split(".")[0] for m in sys.modules} & set(heavy))}))
"""


def imported(prog: str, *args: str) -> dict:
    run = subprocess.run([sys.executable, "-c", CHILD, prog, json.dumps(args), json.dumps(HEAVY)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.mark.parametrize("prog", ["patch-diff", "patch-ctl", "patch-report"])
def test_help_imports_no_heavy_library(prog):
    result = imported(prog, "--help")
    assert result["code"] == 0 and "Usage:" in result["out"]
    assert result["imported"] == []


def test_list_imports_no_heavy_library():
    target = subprocess.Popen(["sleep", "60"])
    try:
        result = imported("patch-ctl", "list", "-p", str(target.pid))
    finally:
        target.kill()
        target.wait()
    assert result["code"] == 0 and f"no patches in process {target.pid}" in result["out"]
    assert result["imported"] == []  # typer 0.29 would import pydantic to convert the arguments


def test_diff_loads_no_disassembler(tmp_path):
    """The differ decodes instruction lengths itself: capstone (9 MiB, more than three times a small unit) is
    for what shows instructions. This pair needs both decodings the differ does: a PC-relative reference to
    a string (its target counted from the instruction's end) and a line number that moved (an immediate
    loaded for a reporting function, which is no change)."""
    source = ('extern int printf(const char *, ...);\nextern void __might_sleep(const char *file, int line);\n'
              '{pad}int shout(int x) {{ return printf("{word} %d\\n", x * 3); }}\n'
              'void nap(void) {{ __might_sleep("nap.c", __LINE__); }}\n')
    for name, pad, word in (("orig", "", "hello"), ("patched", "\n\n", "hullo")):
        (tmp_path / f"{name}.c").write_text(source.format(pad=pad, word=word))
        subprocess.run(["gcc", "-O2", "-ffunction-sections", "-fdata-sections", "-c", f"{name}.c"], cwd=tmp_path,
                       check=True)
    result = imported("patch-diff", str(tmp_path / "orig.o"), str(tmp_path / "patched.o"), "-o",
                      str(tmp_path / "out.o"))
    assert result["code"] == 0, result
    assert "changed: shout" in result["out"] and "nap" not in result["out"]
    assert "capstone" not in result["imported"] and "lief" not in result["imported"]
