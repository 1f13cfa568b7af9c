"""Kernel patches at boot (`patch-ctl boot`, loader.boot): the store's per-release manifest and the shell
loader that reads it, under the host's /bin/sh and under busybox (an initramfs's shell).

No test here loads a module into the host kernel: the modules of the host's release are corrupt or missing
(left out before insmod, `store` corrupts one) or named after a module the host has already
(/sys/module/printk: skipped); the others are of another release. Loading itself is tested in qemu (tests/kernel/test_boot_load.py)."""
from __future__ import annotations

import hashlib
import os
import subprocess

import pytest
from livetarget import assert_one_line_error, patch_ctl
from support.kmodule import kernel_module

from patch_build.loader.boot import loader_script

RELEASE = os.uname().release
OTHER = "6.1.0-99-amd64"
SHELLS = [["sh"], ["busybox", "sh"]]


@pytest.fixture
def store(tmp_path):
    store = tmp_path / "store"
    for name, release in (("printk", RELEASE), ("a_broken", RELEASE), ("elsewhere", OTHER)):
        module = kernel_module(tmp_path / f"{name}.ko", name, release)
        run = patch_ctl("install", "--store", store, module)
        assert run.returncode == 0, run.stderr
    with open(stored(store, "a_broken"), "ab") as f:  # never insmod-ed on the host: see above
        f.write(b"\0")
    return store


def loader(shell: list[str], tmp_path, *args) -> subprocess.CompletedProcess:
    script = tmp_path / "load-kernel-patches"
    script.write_bytes(loader_script())
    return subprocess.run([*shell, str(script), *map(str, args)], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def stored(store, name: str):
    [path] = (store / "modules").glob(f"{name}-*.ko")
    return path


def test_manifest_per_release(store, tmp_path):
    files = {name: f"modules/{stored(store, name).name}" for name in ("printk", "a_broken", "elsewhere")}
    sha = {name: hashlib.sha256((tmp_path / f"{name}.ko").read_bytes()).hexdigest() for name in files}
    assert sorted(p.name for p in (store / "kernel").iterdir()) == sorted([RELEASE, OTHER])
    assert (store / "kernel" / RELEASE).read_text() == (
        f"# patch-build: the kernel patches installed for {RELEASE}, in load order: SHA256 FILE NAME\n"
        f"{sha['a_broken']} {files['a_broken']} a_broken\n"
        f"{sha['printk']} {files['printk']} printk\n")
    assert (store / "kernel" / OTHER).read_text().splitlines()[1:] == [f"{sha['elsewhere']} {files['elsewhere']} elsewhere"]
    assert oct((store / "kernel" / OTHER).stat().st_mode & 0o777) == "0o600"

    # a lost manifest is written again by an install of the same module; an uninstall drops an empty one
    (store / "kernel" / OTHER).unlink()
    assert patch_ctl("install", "--store", store, tmp_path / "elsewhere.ko").returncode == 0
    assert (store / "kernel" / OTHER).is_file()
    assert patch_ctl("uninstall", "--store", store, "elsewhere").returncode == 0
    assert [p.name for p in (store / "kernel").iterdir()] == [RELEASE]


def test_release_that_names_no_file_refused(tmp_path):
    module = kernel_module(tmp_path / "evil.ko", "evil", "../../etc")
    assert_one_line_error(patch_ctl("install", "--store", tmp_path / "store", module), 2,
                          "evil.ko", "unusable kernel release '../../etc'")


@pytest.mark.parametrize("shell", SHELLS, ids=["sh", "busybox"])
def test_corrupt_module_left_out_others_go_on(store, tmp_path, shell):
    broken = stored(store, "a_broken")
    recorded = hashlib.sha256((tmp_path / "a_broken.ko").read_bytes()).hexdigest()
    now = hashlib.sha256(broken.read_bytes()).hexdigest()
    run = loader(shell, tmp_path, "--store", store)
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.stdout.splitlines() == [
        f"not loaded a_broken into kernel {RELEASE}, left out: {broken} is not intact (sha256 {now}, "
        f"the store records {recorded})",
        "loaded already: printk"], run.stdout + run.stderr  # the manifest's order: by name
    only = loader(shell, tmp_path, "--store", store, "--only", "printk")
    assert (only.returncode, only.stdout) == (0, "loaded already: printk\n"), only.stdout + only.stderr
    absent = loader(shell, tmp_path, "--store", store, "--only", "elsewhere")  # installed for another release
    assert absent.returncode == 1 and "not loaded elsewhere into kernel" in absent.stdout, absent.stdout


def test_patch_ctl_boot(store, tmp_path):
    run = patch_ctl("boot", "--store", store, "--only", "printk")
    assert (run.returncode, run.stdout) == (0, "loaded already: printk\n"), run.stdout + run.stderr
    missing = stored(store, "a_broken")
    missing.unlink()
    run = patch_ctl("boot", "--store", store)
    assert run.returncode == 1 and run.stdout == (f"not loaded a_broken into kernel {RELEASE}, left out: {missing} "
                                                  "cannot be read\nloaded already: printk\n"), run.stdout
    none = patch_ctl("boot", "--store", tmp_path / "none")
    assert (none.returncode, none.stdout) == (0, f"no kernel patches installed for {RELEASE} in {tmp_path / 'none'}\n")


@pytest.mark.parametrize("shell", SHELLS, ids=["sh", "busybox"])
def test_unsafe_store_or_manifest_refused(store, tmp_path, shell):
    manifest = store / "kernel" / RELEASE
    manifest.chmod(0o620)
    run = loader(shell, tmp_path, "--store", store)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr == f"load-kernel-patches: refused: {manifest} is writable by group or others (mode 620)\n"
    manifest.chmod(0o600)
    text = manifest.read_text()
    manifest.write_text(text + "0123 modules/../../x.ko x\n")
    run = loader(shell, tmp_path, "--store", store)
    assert (run.returncode, run.stdout, run.stderr) == (2, "", f"load-kernel-patches: {manifest}: malformed line 4\n")
    header, first, *others = text.splitlines(keepends=True)
    sha, fields = first.split(" ", 1)
    manifest.write_text("".join([header, f"{sha.upper()} {fields}", *others]))  # a digest in capitals
    run = loader(shell, tmp_path, "--store", store)
    assert (run.returncode, run.stdout, run.stderr) == (2, "", f"load-kernel-patches: {manifest}: malformed line 2\n")
    bad = loader(shell, tmp_path, "--store")
    assert bad.returncode == 2 and bad.stderr == "load-kernel-patches: --store needs a value\n"


def test_manifest_checked_against_the_index(store, tmp_path):
    """`patch-ctl installed` reports a manifest that says other than the index (the boot loader reads it);
    installing one of its patches again repairs it."""
    manifest = store / "kernel" / OTHER
    manifest.write_text(manifest.read_text().replace(" elsewhere\n", " other\n"))
    run = patch_ctl("installed", "--store", store)
    assert run.returncode == 2
    assert (f"elsewhere (kernel {OTHER}; sha256:" in run.stdout
            and f"NOT INTACT: {manifest}: does not list the kernel patches of {OTHER} the index records" in run.stdout)
    assert patch_ctl("install", "--store", store, tmp_path / "elsewhere.ko").returncode == 0
    assert manifest.read_text().endswith(" elsewhere\n")
    manifest.unlink()
    run = patch_ctl("installed", "--store", store)
    assert run.returncode == 2 and f"NOT INTACT: {manifest}: No such file or directory" in run.stdout, run.stdout
