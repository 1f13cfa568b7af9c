"""Kernel patches at boot (`patch-ctl boot`, loader.boot): the store's per-release manifest and the shell
loader that reads it, under the host's /bin/sh and under busybox (an initramfs's shell).

No test here loads a module into the host kernel: the modules of the host's release are corrupt or missing
(left out before insmod, `store` corrupts one) or named after a module the host has already
(/sys/module/printk: skipped); the others are of another release, or go to a stand-in for insmod (FAKES) that
shell functions put in front of insmod and any applet. Loading itself is tested in qemu
(tests/kernel/test_boot_load.py)."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time

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


# Stand-ins for the kernel and an attacker, run instead of the loader's insmod and sha256sum. insmod records the
# file it is given, that file's SHA-256 and its directory's mode, refuses modules named *refused*, and hangs
# (its pid in INSMOD_LOG.pid) on those named *hangs*. sha256sum answers, then replaces the store's file
# SWAP_OUT by SWAP_IN: the swap the loader must not be fooled by, between its check and its insmod.
FAKES = {
    "insmod": """#!/bin/sh
echo "$1 $(sha256sum <"$1" | cut -d ' ' -f 1) $(stat -c %a "${1%/*}")" >>"$INSMOD_LOG"
case $1 in
*refused*) echo "insmod: can't insert '$1': Operation not permitted" >&2; exit 1 ;;
*hangs*) echo $$ >"$INSMOD_LOG.pid"; exec sleep 60 ;;
esac
""",
    "sha256sum": """#!/bin/sh
sha256sum "$@"; status=$?
if [ -n "$SWAP_OUT" ]; then cat "$SWAP_IN" >"$SWAP_OUT"; fi
exit $status
""",
}


def loader_argv(shell: list[str], tmp_path, *args, fakes: bool = False) -> list[str]:
    """The command that runs the loader; with `fakes`, its insmod and sha256sum are FAKES (shell functions come
    before the PATH and before busybox's applets, so no module ever reaches the host kernel)."""
    script = tmp_path / "load-kernel-patches"
    script.write_bytes(loader_script())
    argv = [str(script), *map(str, args)]
    if not fakes:
        return [*shell, *argv]
    bin_dir = tmp_path / "fakes"
    bin_dir.mkdir(exist_ok=True)
    for name, text in FAKES.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    shadow = "".join(f'{name}() {{ "{bin_dir / name}" "$@"; }}; ' for name in FAKES)
    return [*shell, "-c", shadow + '. "$0"', *argv]


def loader(shell: list[str], tmp_path, *args, fakes: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(loader_argv(shell, tmp_path, *args, fakes=fakes), capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


@pytest.fixture(autouse=True)
def private_base(tmp_path, monkeypatch):
    """The TMPDIR of every loader a test runs, so their private directories are the test's to look at (never
    the host's /run)."""
    base = tmp_path / "tmp"
    base.mkdir(mode=0o700)
    monkeypatch.setenv("TMPDIR", str(base))
    monkeypatch.setenv("INSMOD_LOG", str(tmp_path / "insmod.log"))
    return base


def installed(tmp_path, *names: str):
    """A store with a module of the host's release per name, and the modules' paths in the store."""
    store = tmp_path / "store"
    for name in names:
        run = patch_ctl("install", "--store", store, kernel_module(tmp_path / f"{name}.ko", name, RELEASE))
        assert run.returncode == 0, run.stderr
    return store, {name: stored(store, name) for name in names}


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
def test_corrupt_module_left_out_others_go_on(store, tmp_path, shell, private_base):
    broken = stored(store, "a_broken")
    recorded = hashlib.sha256((tmp_path / "a_broken.ko").read_bytes()).hexdigest()
    now = hashlib.sha256(broken.read_bytes()).hexdigest()
    run = loader(shell, tmp_path, "--store", store)
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.stdout.splitlines() == [
        f"not loaded a_broken into kernel {RELEASE}, left out: {broken} is not intact (sha256 {now}, "
        f"the store records {recorded})",
        "loaded already: printk"], run.stdout + run.stderr  # the manifest's order: by name
    assert list(private_base.iterdir()) == []  # the copy checked, not intact, is gone
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


@pytest.mark.parametrize("shell", SHELLS, ids=["sh", "busybox"])
def test_insmod_gets_the_checked_private_copy(tmp_path, shell, private_base, monkeypatch):
    """The store's file, replaced after the loader checked its digest (SWAP), is not what insmod loads: insmod
    gets a copy in a private directory (mode 0700, under TMPDIR) whose digest was checked, and the directory is
    gone afterwards, also when insmod fails."""
    store, paths = installed(tmp_path, "b_good", "c_refused")
    digests = {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in paths.items()}
    evil = kernel_module(tmp_path / "evil" / "b_good.ko", "b_good", RELEASE, body="return 1;")
    monkeypatch.setenv("SWAP_IN", str(evil))
    monkeypatch.setenv("SWAP_OUT", str(paths["b_good"]))
    run = loader(shell, tmp_path, "--store", store, fakes=True)
    assert paths["b_good"].read_bytes() == evil.read_bytes()  # the swap happened: the store's path is not safe
    calls = [line.split(" ") for line in (tmp_path / "insmod.log").read_text().splitlines()]
    assert [(os.path.basename(path), digest, mode) for path, digest, mode in calls] == [
        (paths["b_good"].name, digests["b_good"], "700"), (paths["c_refused"].name, digests["c_refused"], "700")]
    [private] = {os.path.dirname(path) for path, _, _ in calls}
    assert os.path.dirname(private) == str(private_base), private
    assert (run.returncode, run.stderr) == (1, "")
    assert run.stdout.splitlines() == [
        f"loaded b_good into kernel {RELEASE} ({paths['b_good']})",
        f"not loaded c_refused into kernel {RELEASE}, left out: insmod {paths['c_refused']}: insmod: can't insert "
        f"'{private}/{paths['c_refused'].name}': Operation not permitted"]
    assert list(private_base.iterdir()) == []


@pytest.mark.parametrize("shell", SHELLS, ids=["sh", "busybox"])
def test_private_directory_removed_when_killed(tmp_path, shell, private_base):
    store, _ = installed(tmp_path, "d_hangs")
    proc = subprocess.Popen(loader_argv(shell, tmp_path, "--store", store, fakes=True),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pid_file = tmp_path / "insmod.log.pid"
    try:
        deadline = time.monotonic() + 30
        while not (pid_file.is_file() and pid_file.read_text().endswith("\n")) and time.monotonic() < deadline:
            time.sleep(0.05)
        [private] = private_base.iterdir()  # insmod is running: its copy is there
        assert [p.name for p in private.iterdir()] == [stored(store, "d_hangs").name]
        proc.send_signal(signal.SIGTERM)
        os.kill(int(pid_file.read_text()), signal.SIGKILL)  # the shell handles the signal once insmod is done
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == -signal.SIGTERM
    assert list(private_base.iterdir()) == []


@pytest.mark.parametrize("shell", SHELLS, ids=["sh", "busybox"])
def test_unsafe_private_base_refused(store, tmp_path, shell, private_base):
    """TMPDIR writable by others: refused unless sticky (as /tmp), where others cannot rename the private
    directory away."""
    private_base.chmod(0o777)
    run = loader(shell, tmp_path, "--store", store, "--only", "printk")
    assert (run.returncode, run.stdout) == (2, "")
    assert run.stderr == f"load-kernel-patches: refused: {private_base} is writable by group or others (mode 777)\n"
    private_base.chmod(0o1777)
    run = loader(shell, tmp_path, "--store", store, "--only", "printk")
    assert (run.returncode, run.stdout, run.stderr) == (0, "loaded already: printk\n", "")
    assert list(private_base.iterdir()) == []


@pytest.mark.parametrize("shell", SHELLS, ids=["sh", "busybox"])
def test_private_directory_without_tmpdir(tmp_path, shell, monkeypatch):
    """No TMPDIR (a boot unit, an initramfs): the private directory is made in /run, where root can (at boot),
    else in /tmp."""
    monkeypatch.delenv("TMPDIR")
    store, paths = installed(tmp_path, "b_good")
    run = loader(shell, tmp_path, "--store", store, fakes=True)
    assert (run.returncode, run.stdout) == (0, f"loaded b_good into kernel {RELEASE} ({paths['b_good']})\n"), run
    [path, _, mode] = (tmp_path / "insmod.log").read_text().split(" ")
    private = os.path.dirname(path)
    assert os.path.dirname(private) == ("/run" if os.access("/run", os.W_OK) else "/tmp") and mode == "700\n"
    assert not os.path.lexists(private)
