"""Boot Debian's kernel under qemu (TCG) with a busybox initramfs that runs a shell script and powers off.

`run_vm(vmlinuz, script, files)` puts `files` ({path in the VM: host path}) and `script` into the
initramfs; /init mounts /proc, /sys and /dev, runs the script, and prints `VM-DONE rc=N` on the serial
console before powering off. The console output is returned; the kernel's own messages go to it
too (loglevel 4: warnings and errors), so a failed insmod shows its reason in the test's failure output.
"""
from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
# Shell functions for scripts that load livepatches: wait_transition NAME (prints 0 once every task is
# switched), wait_gone NAME, disable NAME KEY (prints `R KEY.disabled=gone` and `R KEY.rmmod=0`).
LIVEPATCH_SHELL = r"""
wait_transition() {
    i=0
    while [ $i -lt 60 ]; do
        [ "$(cat /sys/kernel/livepatch/$1/transition 2>/dev/null)" = 0 ] && { echo 0; return; }
        sleep 1; i=$((i + 1))
    done
    cat /sys/kernel/livepatch/$1/transition 2>&1
}
wait_gone() {
    i=0
    while [ -d /sys/kernel/livepatch/$1 ] && [ $i -lt 60 ]; do sleep 1; i=$((i + 1)); done
    [ -d /sys/kernel/livepatch/$1 ] && echo present || echo gone
}
disable() {
    echo 0 > /sys/kernel/livepatch/$1/enabled
    echo "R $2.disabled=$(wait_gone $1)"
    rmmod $1; echo "R $2.rmmod=$?"
}
"""
INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo VM-START
sh /checks.sh
echo "VM-DONE rc=$?"
poweroff -f
"""


def _cpio(root: Path, out: Path) -> None:
    names = subprocess.run(["find", "."], cwd=root, capture_output=True, text=True, check=True).stdout
    archive = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=names.encode(),
                             capture_output=True, check=True).stdout
    out.write_bytes(gzip.compress(archive, compresslevel=1))


def run_vm(vmlinuz: Path, script: str, files: dict[str, Path] | None = None, timeout: int = 600,
           memory: int = 512) -> str:
    with tempfile.TemporaryDirectory(prefix="patch-build-vm-") as tmp:
        root = Path(tmp, "root")
        for d in ("bin", "proc", "sys", "dev", "tmp", "lib/modules"):
            (root / d).mkdir(parents=True, exist_ok=True)
        shutil.copy(BUSYBOX, root / "bin" / "busybox")
        (root / "init").write_text(INIT)
        (root / "init").chmod(0o755)
        (root / "checks.sh").write_text(script)
        for dest, src in (files or {}).items():
            target = root / dest.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, target)
        initrd = Path(tmp, "initrd.gz")
        _cpio(root, initrd)
        cmd = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", str(memory),
               "-nographic", "-no-reboot", "-monitor", "none",
               "-kernel", os.fspath(vmlinuz), "-initrd", os.fspath(initrd),
               "-append", "console=ttyS0 panic=-1 oops=panic nokaslr loglevel=4"]
        try:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"").decode(errors="replace")
            raise AssertionError(f"VM did not finish within {timeout} s; console:\n{out[-6000:]}") from None
        out = proc.stdout.decode(errors="replace").replace("\r\n", "\n")
        if "VM-DONE" not in out:
            raise AssertionError(f"VM stopped before its checks finished; console:\n{out[-6000:]}")
        return out[out.index("VM-START"):]


def vm_results(console: str) -> dict[str, str]:
    """The `R key=value` lines a VM script printed, and the whole console under "console"."""
    results = dict(re.findall(r"^R ([\w.]+)=(.*)$", console, re.M))
    results["console"] = console
    return results


def check_results(vm: dict[str, str], expected: dict[str, str]) -> None:
    got = {k: vm.get(k) for k in expected}
    assert got == expected, f"VM results differ; console:\n{vm['console'][-4000:]}"


def built_module(modules: dict, name: str):
    """The module patch-build wrote for `name`, failing the test with its stderr when it wrote none."""
    b = modules[name]
    assert b.ok, f"patch-build failed for {name} (exit {b.returncode}):\n{b.stderr}"
    return b.module
