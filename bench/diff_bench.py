"""Differ benchmark: patch-diff's time and memory on generated units and on kernel units, beside
create-diff-object's when kpatch's source is on the machine.

Run by hand (`make bench` or `python3 bench/diff_bench.py [--units UNIT ...] [--counts N ...]`); prints tables.

1. Generated units of 100, 1,000 and 10,000 functions, one changed: `diff_objects` alone (imports excluded)
   and with writing OUT.o, in a fresh process each, best of --repeat; peak RSS after the imports.
2. Kernel units (--units, of fs/ext4/symlink.c, fs/ext4/inode.c, kernel/sched/core.c, fs/proc/meminfo.c,
   fs/proc/base.c), compiled twice from the cached, prepared Debian 6.1 tree of the kernel tests
   (~/.cache/patch-build/kernel/release.json, made by tests/kernel/debian_kernel.py) with kbuild's own command
   line and objtool, into a scratch directory
   under the unit's own file name: the tree is left as it is. The patched copy changes one string literal of a
   function. The special-section entry sizes of that kernel (kbuild.struct_sizes) are given to both differs as
   kpatch-build gives them, in ALT_STRUCT_SIZE=... variables. For each pair:
   - whole `patch-diff --kernel` process: CPU time (user + system, best of --repeat) and peak RSS, against
     `interp`: the same command refused on /dev/null (start-up, imports, argument parsing: the process
     without its inputs). Memory target: peak - interp <= 3 x the two inputs.
   - per pair within one process (patch-build diffs many units in one): `diff_objects` + write, best of
     --repeat, imports excluded.
   - create-diff-object's CPU time and peak RSS on the same pair, built from kpatch's source if
     $KPATCH_SRC (or --kpatch-src) names a kpatch checkout (a scratch copy of it is built with
     `make -C kpatch-build create-diff-object`; libelf-dev needed; nothing is copied into this repository), run
     as `create-diff-object ORIG.o PATCHED.o PARENT PARENT.symtab Module.symvers bench OUT.o` with the parent's
     `readelf -s --wide` listing (the unit's module .ko from the cached image; for units of vmlinux --vmlinux, by
     default the kernel tests' debug vmlinux when cached) and an empty Module.symvers (patch-diff gets no
     exports either). It finds the unit's local symbols in the parent by the unit's FILE symbol: Debian's
     modules are stripped of those, so for the ext4 units that column says so instead.
3. Start-up: `patch-diff --help`, CPU time.

Python's bytecode is cached for the runs (PYTHONPYCACHEPREFIX in a scratch directory), as an installed
package has it. Figures are CPU time, not wall time: the machine may be shared.

Targets (issue 11): whole process <= 1.5 x create-diff-object's CPU on a ~2 MB pair and <= 0.25 s on a small
one; per pair in one process <= create-diff-object's; `--help` <= 0.2 s; peak memory as above.

Side by side (2026-11-30, one run, `--repeat 3`, `KPATCH_SRC=~/.cache/patch-build/kpatch-src`; 2 cores shared
with three other jobs, so a CPU figure moves by up to a third from run to run; Python 3.11, typer 0.28).
create-diff-object is kpatch's at commit 0391bce5 (a recent one: loongarch64, __pfx_ symbols). No kpatch source
is on this machine and Debian 12 has no package, so its kpatch-build/ was reconstructed from a public index into
~/.cache/patch-build/kpatch-src (create-diff-object.c, kpatch-elf.c/.h, lookup.c, list.h and the small headers
at or matching that commit; the x86 instruction decoder, which kpatch bundles a copy of, from the Debian 6.1
tree's tools/arch/x86), built with gcc 12 -O2 -g against libelf 0.188. CPU seconds, peak RSS; interp (the
process without inputs) 0.090 s, 18.2 MiB:
  pair (both inputs)            patch-diff process  (peak-interp)/inputs  in one process  create-diff-object
  kernel/sched/core.c (4.9 MB)  0.235 s  26.4 MiB    1.7x                 0.140 s         0.456 s  27.2 MiB
  fs/proc/base.c (1.7 MB)       0.124 s  20.9 MiB    1.6x                 0.034 s         0.095 s  16.3 MiB
  fs/proc/meminfo.c (0.6 MB)    0.100 s  18.5 MiB    0.4x                 0.005 s         0.096 s  13.9 MiB
  fs/ext4/inode.c (3.0 MB)      0.127 s  21.1 MiB    1.0x                 0.036 s         (ext4.ko stripped of
  fs/ext4/symlink.c (0.4 MB)    0.093 s  18.4 MiB    0.4x                 0.002 s          FILE symbols)
  patch-diff --help             0.075 s  21.2 MiB
Against the targets: whole process on the ~2 MB pair (core.c, 2.5 MB each) 0.52x create-diff-object's: met.
Small pairs <= 0.25 s: symlink.c 0.09 s, meminfo.c 0.10 s, base.c 0.12 s: met. In one process: 0.14 s against
0.46 s on core.c, 0.03 s against 0.10 s on base.c, 0.005 s against 0.10 s on meminfo.c: met. `--help` <= 0.2 s:
met. Memory (peak - interp <= 3x the inputs): met on every pair, 0.4x to 1.7x; core.c's peak is now at
create-diff-object's.

Where create-diff-object's time goes (perf, core.c): 70% in kpatch_elf_open (a linear symbol search per
relocation), 6-10% reading the parent's readelf listing; patch-diff reads no parent table (patch-build
resolves positions itself). It also refuses a change gcc put in a .cold part only (the string of
select_fallback_rq's or sched_show_task's unlikely path): "function X.cold has no fentry/mcount call, unable to
patch", exit 2, where patch-diff replaces the parent ("changed: select_fallback_rq (its part
select_fallback_rq.cold changed)"); core.c's change here is in cpu_cfs_stat_show so that both diff it.

Before the issue-11 work -> after it, without create-diff-object (same bench, earlier change of core.c in
select_fallback_rq's .cold part), CPU seconds and peak RSS of the whole `patch-diff` process:
  kernel/sched/core.c (2.5 MB x 2)  1.258 s -> 0.544 s   133.6 -> 67.5 MiB   in one process 0.351 -> 0.211 s
  fs/ext4/inode.c (1.5 MB x 2)      0.967 s -> 0.317 s   108.4 -> 48.1 MiB   in one process 0.099 -> 0.066 s
  fs/ext4/symlink.c (0.2 MB x 2)    0.774 s -> 0.235 s    88.7 -> 35.1 MiB
  generated, 100 functions          0.802 s -> 0.249 s    96.9 -> 38.0 MiB
  patch-diff --help                 0.206 s -> 0.089 s    38.6 -> 21.7 MiB
("in one process" excludes imports, LIEF's too before.)

Memory, peak RSS of the whole `patch-diff --kernel` process and (peak - interp)/inputs, at four points: before
typer 0.28 and the lazy debug relocations -> after them -> debug sections' contents read only if asked for, the
file read a part at a time, instruction bounds in arrays, fewer per-symbol lists -> now (instruction lengths
decoded by elfcore.x86_64_lengths instead of capstone; one run each, this bench):
                       peak RSS                          (peak - interp)/inputs        create-diff-object
  kernel/sched/core.c  68.1 -> 41.1 -> 35.7 -> 26.4 MiB  7.0x -> 4.7x -> 3.5x -> 1.7x   27.2 MiB
  fs/proc/base.c               31.7 -> 30.3 -> 20.9 MiB         7.9x -> 7.0x -> 1.6x   16.3 MiB
  fs/proc/meminfo.c            28.6 -> 28.0 -> 18.5 MiB        18.0x -> 16.8x -> 0.4x  13.9 MiB
  fs/ext4/inode.c      48.2 -> 25.0 -> 21.1 -> 21.1 MiB  4.9x -> 2.2x -> 0.9x -> 1.0x
  fs/ext4/symlink.c    35.4 -> 18.8 -> 18.5 -> 18.4 MiB  4.4x -> 1.2x -> 0.3x -> 0.4x
  interp               33.5 -> 18.3 -> 18.4 -> 18.2 MiB  (typer 0.29 imported pydantic for every argument)
The last step took out 9.1 MiB that no input explained: `import capstone` loads the Python modules of all 18
of its architectures (about 5 MB of Python objects, mostly their constants) and libcapstone.so (2 MB of dynamic
relocations the loader reads, a 1.3 MB .data.rel.ro it writes), and nearly every diff of code loaded it to
find where an instruction ends (a PC-relative reference to a section symbol). The differ needs lengths only;
the decoder's tables are 512 bytes, and on core.c it decodes 53 KB of code (178 sections) in about 0.01 s,
under 1 us an instruction.
Of core.c's 8.2 MiB above interp now: the two models (relocations of the loaded sections 1.6 MB, their
contents 0.8 MB, sections, symbols and names about 3 MB), the rest the passes' caches and the output. The
debug information (2 of each 2.5 MB input) is not read at all.
Objects without debug information are another matter: on the generated units (gcc -O2, no -g; one run,
`--repeat 2`) peak - interp is 9.9x the inputs at 100 functions, 10.1x at 1,000 and 9.9x at 10,000 (79.2 MiB
for 6.3 MB). Such a file is nearly all the model holds as Python objects: per one-line function about 310
bytes of file (its section and relocation section headers, two symbols, three relocations, names) become
about 1.7 KB per object read (two Section objects with their name, contents and lists, two Symbol objects,
three Relocation objects). Reaching 3x there needs a model held in arrays rather than objects: not done.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the generator and compile helper the tests use
sys.path.insert(0, str(REPO / "tests" / "kernel"))
sys.path.insert(0, str(REPO / "bench"))  # measure.py, also under `python -P`

from debian_kernel import CACHE  # noqa: E402
from measure import best_of, child_env  # noqa: E402
from support import generate, toolchain  # noqa: E402

from patch_build.diffobj.arch.x86_64_special import KPATCH_SIZE_VARIABLES  # noqa: E402
from patch_build.kbuild.struct_sizes import struct_sizes  # noqa: E402

TARGET_COUNT, TARGET_SECONDS = 1000, 1.0
CFLAGS = ["-O2"]
# The kernel units, and the string literal each pair changes (in a function's code, so the diff has work).
KERNEL_CHANGES = {
    "fs/ext4/symlink.c": ('"bad symlink.");\n\t\t\treturn ERR_PTR(-EFSCORRUPTED);\n\t\t}\n\t\tcaddr',
                          '"bad symlink (bench).");\n\t\t\treturn ERR_PTR(-EFSCORRUPTED);\n\t\t}\n\t\tcaddr'),
    "fs/ext4/inode.c": ('"xattr delete (err %d)"', '"xattr delete failed (err %d)"'),
    # cpu_cfs_stat_show's own code: create-diff-object (at 0391bce5) refuses a change that gcc put in a .cold
    # part only (sched_show_task's, select_fallback_rq's strings): "has no fentry/mcount call"
    "kernel/sched/core.c": ('"throttled_time %llu\\n"', '"throttled time %llu\\n"'),
    "fs/proc/meminfo.c": ('"MemTotal:       "', '"MemTotal (b):   "'),  # a small unit of vmlinux
    "fs/proc/base.c": ('"%llu %llu %lu\\n"', '"%llu %llu %lu \\n"'),  # proc_pid_schedstat; a mid-sized one
}
KCFLAGS = f"-ffunction-sections -fdata-sections -I{REPO / 'templates' / 'kernel' / 'include'}"  # as kbuild.kernel_tree

# Runs in the child: imports first (not timed), then the diff, several times, best time kept.
CHILD = r"""
import json, os, resource, sys, time
from patch_build.diffobj.diff import DiffOptions, diff_objects
from patch_build.diffobj.struct_sizes import from_settings
orig, patched, out, repeat, kernel = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
sizes = from_settings([], os.environ)  # kpatch's variables, as patch-diff and create-diff-object read them
diff_objects(orig, patched, DiffOptions(kernel=kernel, struct_sizes=sizes))  # lazy imports (capstone) load here
base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
best_diff = best_total = float("inf")
for _ in range(repeat):
    t0 = time.process_time()
    result = diff_objects(orig, patched, DiffOptions(objname="bench", kernel=kernel, struct_sizes=sizes))
    t1 = time.process_time()
    result.write(out)
    t2 = time.process_time()
    best_diff, best_total = min(best_diff, t1 - t0), min(best_total, t2 - t0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"diff": best_diff, "total": best_total, "rss_kb": peak, "base_kb": base_rss,
                  "changed": [c.name for c in result.changed_functions], "errors": len(result.errors)}))
"""


def without_inputs(repeat: int, out: Path, env: dict, *options: str) -> tuple[float, int]:
    """CPU time and peak RSS (KiB) of a `patch-diff` refused on /dev/null: the process without its inputs."""
    return best_of(repeat, [sys.executable, "-m", "patch_build.diffobj", *options, "/dev/null", "/dev/null", "-o",
                            str(out)], env, expect=(2,))


def in_process(orig: Path, patched: Path, out: Path, repeat: int, kernel: bool, env: dict) -> dict:
    run = subprocess.run([sys.executable, "-c", CHILD, str(orig), str(patched), str(out), str(repeat),
                          "1" if kernel else "0"], capture_output=True, text=True, env=env)
    if run.returncode:
        raise SystemExit(f"diff_bench: the differ failed on {orig}:\n{run.stderr}")
    return json.loads(run.stdout)


# ---- generated units ------------------------------------------------------------------------------------

def generated_pair(count: int, workdir: Path) -> tuple[Path, Path]:
    changed = count // 2
    (workdir / "orig.c").write_text(generate.many_functions(count))
    (workdir / "patched.c").write_text(generate.many_functions(count, changed=changed))
    orig, patched = toolchain.compile_objects([(workdir / "orig.c", workdir / "orig.o", CFLAGS),
                                              (workdir / "patched.c", workdir / "patched.o", CFLAGS)])
    return orig, patched


def bench_generated(counts: list[int], repeat: int, tmp: Path, env: dict) -> None:
    rows = []
    for count in counts:
        work = tmp / f"gen{count}"
        work.mkdir()
        print(f"compiling {count:,} functions twice (gcc {' '.join(CFLAGS)}) ...", file=sys.stderr, flush=True)
        orig, patched = generated_pair(count, work)
        m = in_process(orig, patched, work / "out.o", repeat, False, env)
        expected = [f"f{count // 2}"]
        if m["changed"] != expected or m["errors"]:
            raise SystemExit(f"diff_bench: wrong result for {count}: changed {m['changed']}, "
                             f"{m['errors']} errors (expected {expected})")
        cpu, rss = best_of(repeat, [sys.executable, "-m", "patch_build.diffobj", str(orig), str(patched), "-o",
                                    str(work / "out.o")], env)
        rows.append((count, orig.stat().st_size + patched.stat().st_size, m, cpu, rss))
    _, interp = without_inputs(repeat, tmp / "interp.o", env)

    print(f"\ngenerated units (one function changed, no debug information), CPU seconds; interp = the process "
          f"without inputs ({interp / 1024:.1f} MiB):")
    print(f"{'functions':>10} {'inputs':>9} {'diff':>8} {'diff+write':>11} {'process':>8} {'peak RSS':>9} "
          f"{'diff RSS':>9} {'(RSS-interp)/inputs':>20}")
    for count, size, m, cpu, rss in rows:
        print(f"{count:>10,} {size / 1024:>7.0f}KB {m['diff']:>7.3f}s {m['total']:>10.3f}s {cpu:>7.3f}s "
              f"{rss / 1024:>7.1f}MB {(m['rss_kb'] - m['base_kb']) / 1024:>7.1f}MB "
              f"{(rss - interp) * 1024 / size:>19.1f}x")
    for count, _, m, _, _ in rows:
        if count == TARGET_COUNT:
            verdict = "met" if m["total"] < TARGET_SECONDS else "MISSED"
            print(f"target: {TARGET_COUNT:,}-function pair in under {TARGET_SECONDS:.0f} s: {verdict} "
                  f"({m['total']:.3f} s)")


# ---- kernel units ---------------------------------------------------------------------------------------

def kernel_release() -> dict | None:
    """The release the kernel tests chose ({"release", "version"}, CACHE/release.json), None before any ran."""
    try:
        return json.loads((CACHE / "release.json").read_text())
    except (OSError, ValueError):
        return None


def kernel_tree() -> Path | None:
    release = kernel_release()
    tree = CACHE / f"linux-source-{release['version']}" if release else None
    if tree is None or not (tree / "include" / "generated" / "autoconf.h").is_file():
        return None
    return tree


def compile_command(tree: Path, unit: str) -> tuple[str, str]:
    """kbuild's gcc and objtool command lines for `unit` (from `make -n`, which builds nothing)."""
    obj = unit[:-2] + ".o"
    text = subprocess.run(["make", "-n", obj, f"KCFLAGS={KCFLAGS}"], cwd=tree, capture_output=True,
                          text=True).stdout
    gcc = re.search(rf"(gcc -Wp[^;]* -c -o {re.escape(obj)} {re.escape(unit)})", text)
    objtool = re.search(rf"(\./tools/objtool/objtool [^;']* {re.escape(obj)})", text)
    if gcc is None:
        raise SystemExit(f"diff_bench: no compile command for {unit} in `make -n {obj}` of {tree}")
    return gcc.group(1), objtool.group(1) if objtool else ""


def kernel_pair(tree: Path, unit: str, workdir: Path) -> tuple[Path, Path]:
    """Compile `unit` and a copy with one string literal changed into workdir, as kbuild does. Each copy keeps
    the unit's file name: it is the object's STT_FILE symbol, by which create-diff-object finds the unit's
    local symbols in the parent's symbol table."""
    gcc, objtool = compile_command(tree, unit)
    obj = unit[:-2] + ".o"
    source = (tree / unit).read_text()
    old, new = KERNEL_CHANGES[unit]
    if source.count(old) != 1:
        raise SystemExit(f"diff_bench: {unit} does not hold {old} once")
    outputs = []
    for stem, text in (("orig", source), ("patched", source.replace(old, new))):
        (workdir / stem).mkdir()
        src, out = workdir / stem / os.path.basename(unit), workdir / f"{stem}.o"
        src.write_text(text)
        cmd = re.sub(r"-Wp,-MMD,\S+ ", "", gcc).replace(
            f" -c -o {obj} {unit}", f" -iquote {shlex.quote(os.path.dirname(unit))} -c -o {out} {src}")
        if objtool:
            cmd += " && " + objtool.replace(f" {obj}", f" {out}")
        subprocess.run(["sh", "-ec", cmd], cwd=tree, check=True, capture_output=True)
        outputs.append(out)
    return outputs[0], outputs[1]


def build_create_diff_object(kpatch_src: Path, tmp: Path) -> Path:
    """kpatch's create-diff-object, built from its source in a scratch copy of the checkout (kpatch-build's
    Makefile includes ../Makefile.inc and ../kmod/patch)."""
    copy = tmp / "kpatch"
    shutil.copytree(kpatch_src, copy, ignore=shutil.ignore_patterns(".git"))
    run = subprocess.run(["make", "-C", str(copy / "kpatch-build"), "create-diff-object"], capture_output=True,
                         text=True)
    if run.returncode:
        raise SystemExit(f"diff_bench: building create-diff-object failed:\n{run.stderr[-2000:]}")
    return copy / "kpatch-build" / "create-diff-object"


def parent_of(tree: Path, unit: str, vmlinux: Path | None) -> tuple[str, Path] | str:
    """(parent name, parent ELF) create-diff-object needs for `unit`, or why there is none."""
    obj = unit[:-2] + ".o"
    makefile = (tree / os.path.dirname(unit) / "Makefile").read_text(errors="replace").replace("\\\n", " ")
    module = next((m for m in re.findall(r"^obj-\$\(CONFIG_\w+\)\s*\+=\s*(\w+)\.o", makefile, re.M)
                   if re.search(rf"^{m}-y\s*[:+]?=.*\b{re.escape(os.path.basename(obj))}", makefile, re.M)), None)
    if module is None or module == "built-in":
        if vmlinux is None:
            return "vmlinux unit: give --vmlinux"
        return "vmlinux", vmlinux
    kos = sorted(CACHE.glob(f"image-{kernel_release()['release']}/lib/modules/*/kernel/**/{module}.ko"))
    return (module, kos[-1]) if kos else f"{module}.ko not in the cached image"


def bench_kernel(units: list[str], repeat: int, tmp: Path, env: dict, cdo: Path | None,
                 vmlinux: Path | None) -> None:
    if not units:
        return
    tree = kernel_tree()
    if tree is None:
        print(f"\nkernel units: no prepared tree in {CACHE} (run the kernel tests once to make it)")
        return
    # The tables' entry sizes of this kernel, as patch-build measures them, given to both differs the way
    # kpatch-build gives them to create-diff-object.
    sizes = struct_sizes(tree, dict(os.environ), os.cpu_count() or 1, tmp)
    env = dict(env, **{var: str(sizes.sizes[struct]) for var, struct in KPATCH_SIZE_VARIABLES.items()
                       if struct in sizes.sizes})
    vmlinux = vmlinux or next((p for p in [CACHE / f"vmlinux-{kernel_release()['release']}"] if p.is_file()), None)
    interp_cpu = interp = None
    rows = []
    for unit in units:
        work = tmp / unit.replace("/", "_")
        work.mkdir()
        print(f"compiling {unit} twice ...", file=sys.stderr, flush=True)
        orig, patched = kernel_pair(tree, unit, work)
        out = work / "out.o"
        diff_cmd = [sys.executable, "-m", "patch_build.diffobj", "--kernel", str(orig), str(patched), "-o", str(out)]
        best_of(1, diff_cmd, env)  # bytecode cached
        if interp is None:
            interp_cpu, interp = without_inputs(repeat, out, env, "--kernel")
        cpu, rss = best_of(repeat, diff_cmd, env)
        m = in_process(orig, patched, out, repeat, True, env)
        theirs = "no kpatch source ($KPATCH_SRC)"
        if cdo is not None:
            parent = parent_of(tree, unit, vmlinux)
            if isinstance(parent, str):
                theirs = parent
            else:
                name, elf = parent
                symtab = work / f"{name}.symtab"
                text = subprocess.run(["readelf", "-s", "--wide", str(elf)], capture_output=True, text=True,
                                      check=True).stdout
                symtab.write_text(text)
                symvers = work / "Module.symvers"
                symvers.write_text("")
                source = os.path.basename(unit)
                if not re.search(rf" FILE +LOCAL +DEFAULT +ABS {re.escape(source)}$", text, re.M):
                    # it places the unit's local symbols in the parent by the FILE symbol and those after it
                    theirs = f"{elf.name} has no FILE symbol {source} (stripped)"
                else:
                    # create-diff-object ORIG PATCHED PARENT-NAME PARENT-SYMTAB MODULE.SYMVERS PATCH-NAME OUT
                    theirs = best_of(repeat, [str(cdo), str(orig), str(patched), name, str(symtab),
                                              str(symvers), "bench", str(work / "cdo.o")], env, expect=(0, 3))
        rows.append((unit, orig.stat().st_size + patched.stat().st_size, cpu, rss, m, theirs))

    print(f"\nkernel units (one string literal changed); CPU seconds; interp = the process without inputs "
          f"({interp_cpu:.3f} s, {interp / 1024:.1f} MiB):")
    print(f"{'unit':<22} {'inputs':>8} {'process':>8} {'peak RSS':>9} {'(RSS-interp)/inputs':>20} "
          f"{'in one process':>15}   create-diff-object (process, peak RSS)")
    for unit, size, cpu, rss, m, theirs in rows:
        ratio = (rss - interp) * 1024 / size
        cdo_text = theirs if isinstance(theirs, str) else f"{theirs[0]:.3f}s {theirs[1] / 1024:.1f}MB"
        print(f"{unit:<22} {size / 2**20:>6.1f}MB {cpu:>7.3f}s {rss / 1024:>7.1f}MB {ratio:>19.1f}x "
              f"{m['total']:>14.3f}s   {cdo_text}")


def bench_startup(repeat: int, env: dict) -> None:
    cpu, rss = best_of(repeat, [sys.executable, "-m", "patch_build.diffobj", "--help"], env)
    print(f"\npatch-diff --help: {cpu:.3f} s CPU, {rss / 1024:.1f} MiB (target <= 0.2 s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", nargs="*", type=int, default=[100, 1000, 10000],
                        help="sizes of the generated units")
    parser.add_argument("--units", nargs="*", default=list(KERNEL_CHANGES), choices=list(KERNEL_CHANGES),
                        help="kernel units")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measure; the best is kept")
    parser.add_argument("--kpatch-src", type=Path, default=os.environ.get("KPATCH_SRC"),
                        help="a kpatch checkout to build create-diff-object from (default $KPATCH_SRC)")
    parser.add_argument("--vmlinux", type=Path, help="an unstripped vmlinux, for create-diff-object on its units "
                        "(default: the kernel tests' debug vmlinux of the release, when cached)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="diff-bench-") as tmp:
        tmp = Path(tmp)
        env = child_env(tmp / "pycache")
        cdo = build_create_diff_object(args.kpatch_src, tmp) if args.kpatch_src else None
        bench_startup(args.repeat, env)
        bench_generated(args.counts, args.repeat, tmp, env)
        bench_kernel(args.units, args.repeat, tmp, env, cdo, args.vmlinux)


if __name__ == "__main__":
    main()
