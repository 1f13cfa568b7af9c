"""Kernel patches at boot, on each Debian kernel line booted in qemu (one boot per line).

The livepatch meminfo-string is built as a Debian package (`patch-build --package deb`) and installed with
`dpkg --root` into an image root, its postinst putting it into that root's store; beside it, straight into
the same store, two modules of the line's release that must not stop the boot: one whose stored file is then
corrupted, one that the kernel refuses (an object that is no kernel module). The initramfs gets the store and
the package's boot loader; its first step runs that loader as the boot unit does, then looks at the effect.
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess

import pytest
from support.dpkgroot import DpkgRoot
from support.kmodule import kernel_module

from qemu_vm import LIVEPATCH_SHELL, check_results, run_vm, vm_results

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

PACKAGE = "patch-build-meminfo-string"
LOADER = "/usr/lib/patch-build/packages/meminfo_string/load-kernel-patches"
SCRIPT = LIVEPATCH_SHELL + f"""
chunk() {{ grep -o '^V[A-Za-z]*[Cc][Hh][Uu][Nn][Kk]' /proc/meminfo; }}
echo "R boot.before=$(chunk)"
sh {LOADER} >/tmp/boot.log 2>&1; echo "R boot.rc=$?"
sed 's/^/BOOT: /' /tmp/boot.log
echo "R boot.transition=$(wait_transition meminfo_string)"
echo "R boot.enabled=$(cat /sys/kernel/livepatch/meminfo_string/enabled)"
echo "R boot.patched=$(chunk)"
again=$(sh {LOADER} --only meminfo_string 2>&1); echo "R boot.again=$again rc=$?"
"""


@pytest.fixture(scope="module")
def image(kenv, patch_build, tmp_path_factory):
    """The image root: the package installed with dpkg --root, two bad modules in its store."""
    base = tmp_path_factory.mktemp("boot-image")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DEBEMAIL", "ops@example.org")
        env.setenv("SOURCE_DATE_EPOCH", "1700000000")
        built = patch_build("meminfo-string.patch", base / "out", "-n", "meminfo_string", "--package", "deb",
                            "--package-version", "1")
    assert built.ok, built.stderr
    system = DpkgRoot(base)
    system.dpkg("-i", base / "out" / f"{PACKAGE}_1_amd64.deb")
    for name in ("a_corrupt", "b_refused"):
        module = kernel_module(base / f"{name}.ko", name, kenv.release)
        proc = subprocess.run(["patch-ctl", "install", "--store", str(system.store.root), str(module)],
                              capture_output=True, text=True, env=system.env, timeout=60)
        assert proc.returncode == 0, proc.stderr
    [corrupt] = (system.store.root / "modules").glob("a_corrupt-*.ko")
    with open(corrupt, "ab") as f:
        f.write(b"\0")
    return system


@pytest.fixture(scope="module")
def vm(kenv, image) -> dict[str, str]:
    files = {}
    for tree in ("var/lib/patch-build", "usr/lib/patch-build"):
        for path in sorted((image.root / tree).rglob("*")):
            if path.is_file():
                files["/" + os.fspath(path.relative_to(image.root))] = path
    return vm_results(run_vm(kenv.vmlinuz, SCRIPT, files))


def test_installed_patch_loaded_at_boot(kenv, image, vm):
    store = "/var/lib/patch-build"
    stored = {e.name: e for e in image.store.entries()}
    assert sorted(stored) == ["a_corrupt", "b_refused", "meminfo_string"]
    corrupt = (image.store.root / stored["a_corrupt"].file).read_bytes()
    boot = re.findall(r"^BOOT: (.*)$", vm["console"], re.M)
    assert len(boot) == 3, vm["console"][-4000:]
    # by name: the two bad modules first, left out with a line each; the boot goes on to the patch
    assert boot[0] == (f"not loaded a_corrupt into kernel {kenv.release}, left out: {store}/{stored['a_corrupt'].file} "
                       f"is not intact (sha256 {hashlib.sha256(corrupt).hexdigest()}, the store records "
                       f"{stored['a_corrupt'].sha256})")
    assert boot[1].startswith(f"not loaded b_refused into kernel {kenv.release}, left out: insmod "
                              f"{store}/{stored['b_refused'].file}: "), boot[1]
    assert boot[2] == f"loaded meminfo_string into kernel {kenv.release} ({store}/{stored['meminfo_string'].file})"
    check_results(vm, {"boot.before": "VmallocChunk", "boot.rc": "1", "boot.transition": "0", "boot.enabled": "1",
                       "boot.patched": "VMALLOCCHUNK", "boot.again": "loaded already: meminfo_string rc=0"})
    # the package's boot unit, enabled in the image by its postinst, runs the same loader
    unit = image.root / "lib/systemd/system" / f"{PACKAGE}.service"
    assert f"ExecStart=/bin/sh {LOADER}\n" in unit.read_text()
    assert os.path.lexists(image.root / "etc/systemd/system/multi-user.target.wants" / f"{PACKAGE}.service")
