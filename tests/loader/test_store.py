"""The patch store (`patch-ctl install/uninstall/installed`, loader.store): modules built by the real
patch-build, verified on install and on use, keyed by build-id or kernel release."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from patch_build.common.errors import InputError
from livetarget import assert_one_line_error, patch_ctl, patch_ctl_argv, patch_ctl_env
from patch_build.loader.store import Store
from support.kmodule import kernel_module

from patch_build.patchformat.module import read_module

pytestmark = pytest.mark.slow  # builds modules and installs them into stores


@pytest.fixture
def store(tmp_path):
    return tmp_path / "store"


def installed_json(store) -> dict:
    run = patch_ctl("installed", "--json", "--store", store)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_install_list_uninstall(builds, store, tmp_path):
    incr, both = builds.modules["incr-fix"], builds.modules["both"]
    run = patch_ctl("install", "--store", store, incr)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("installed incr-fix (user space: server build-id "), run.stdout
    assert patch_ctl("install", "--store", store, both).returncode == 0
    # root-owned 0700/0600 (here: this user's)
    assert oct(os.stat(store).st_mode & 0o777) == "0o700"
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in [store / "index.json", *(store / "modules").iterdir()])

    listing = installed_json(store)
    assert [p["name"] for p in listing["patches"]] == ["both", "incr-fix"]
    entry = listing["patches"][1]
    info = read_module(incr)
    assert entry["sha256"] == hashlib.sha256(incr.read_bytes()).hexdigest()
    assert entry["targets"] == [{"name": "server", "build_id": info.targets[0].build_id}]
    assert entry["kind"] == "user" and entry["problem"] is None and entry["kernel_release"] == ""
    assert (store / entry["file"]).read_bytes() == incr.read_bytes()
    text = patch_ctl("installed", "--store", store)
    assert text.returncode == 0 and text.stdout.count(" verified\n") == 2, text.stdout

    # the same contents again: nothing to do
    again = patch_ctl("install", "--store", store, incr)
    assert again.returncode == 0 and again.stdout.startswith("already installed: incr-fix"), again.stdout

    run = patch_ctl("uninstall", "--store", store, "incr-fix")
    assert run.returncode == 0 and run.stdout.startswith("uninstalled incr-fix"), run.stderr
    assert [p["name"] for p in installed_json(store)["patches"]] == ["both"]
    both_file = f"both-{listing['patches'][0]['sha256'][:16]}.kpatch"
    assert sorted(p.name for p in (store / "modules").iterdir()) == [both_file]
    assert_one_line_error(patch_ctl("uninstall", "--store", store, "incr-fix"), 2, "incr-fix: not installed")
    assert_one_line_error(patch_ctl("uninstall", "--store", tmp_path / "none", "incr-fix"), 2, "no store there")
    assert not (tmp_path / "none").exists()


def test_store_from_environment(builds, store):
    env = dict(patch_ctl_env(), PATCH_BUILD_STORE=str(store))
    proc = subprocess.run(patch_ctl_argv("install", builds.modules["sum-fix"]), env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"in {store}" in proc.stdout
    assert [p["name"] for p in installed_json(store)["patches"]] == ["sum-fix"]


def test_other_contents_refused_unless_forced(store, tmp_path):
    first = kernel_module(tmp_path / "a" / "livepatch_x.ko", "livepatch_x", "6.1.0-99-amd64")
    second = kernel_module(tmp_path / "b" / "livepatch_x.ko", "livepatch_x", "6.1.0-99-amd64", "return 1;")
    assert patch_ctl("install", "--store", store, first).returncode == 0
    assert_one_line_error(patch_ctl("install", "--store", store, second), 1, "livepatch_x",
                          "installed already with other contents", "--force")
    assert installed_json(store)["patches"][0]["sha256"] == hashlib.sha256(first.read_bytes()).hexdigest()
    run = patch_ctl("install", "--force", "--store", store, second)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("installed livepatch_x (kernel 6.1.0-99-amd64; "), run.stdout
    entries = installed_json(store)["patches"]
    assert [(e["name"], e["kind"], e["kernel_release"], e["sha256"]) for e in entries] == [
        ("livepatch_x", "kernel", "6.1.0-99-amd64", hashlib.sha256(second.read_bytes()).hexdigest())]
    assert [p.name for p in (store / "modules").iterdir()] == [entries[0]["file"].split("/")[1]]  # old one gone


def test_library_lookup_for_a_daemon(builds, store, tmp_path):
    for name in ("incr-fix", "sum-fix", "both"):
        assert patch_ctl("install", "--store", store, builds.modules[name]).returncode == 0
    ko = kernel_module(tmp_path / "livepatch_k.ko", "livepatch_k", "6.1.0-7-amd64")
    assert patch_ctl("install", "--store", store, ko).returncode == 0
    lib = Store(store)
    server_id = read_module(builds.modules["incr-fix"]).targets[0].build_id
    lib_id = read_module(builds.modules["sum-fix"]).targets[0].build_id
    assert [e.name for e in lib.for_build_id(server_id)] == ["both", "incr-fix"]
    assert [e.name for e in lib.for_build_id(lib_id)] == ["both", "sum-fix"]
    assert lib.for_build_id("00" * 20) == []
    assert [e.name for e in lib.for_kernel("6.1.0-7-amd64")] == ["livepatch_k"]
    assert lib.for_kernel("6.1.0-8-amd64") == []
    entry = lib.for_build_id(lib_id)[1]
    assert lib.verify(entry).read_bytes() == builds.modules["sum-fix"].read_bytes()

    # verified on use: a store file changed behind the index's back is refused
    path = store / entry.file
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="modified since it was installed"):
        lib.verify(entry)
    listing = patch_ctl("installed", "--store", store)
    assert listing.returncode == 2
    assert "sum-fix" in listing.stderr and "not intact" in listing.stderr
    assert "sum-fix (user space" in listing.stdout and "NOT INTACT" in listing.stdout

    # installing the same module again repairs the store's copy
    run = patch_ctl("install", "--store", store, builds.modules["sum-fix"])
    assert run.returncode == 0 and run.stdout.startswith("installed sum-fix"), run.stdout + run.stderr
    assert lib.verify(entry).read_bytes() == builds.modules["sum-fix"].read_bytes()

    # a module file others could have written is not used either
    os.chmod(path, 0o666)
    listing = patch_ctl("installed", "--store", store)
    assert listing.returncode == 2 and "writable by group or others" in listing.stdout, listing.stdout


def test_index_is_deterministic(builds, tmp_path):
    names = ["incr-fix", "hold-reply", "sum-fix"]
    indexes = []
    for order, seed in ((names, "0"), (names[::-1], "1")):
        store = tmp_path / f"store{seed}"
        for name in order:
            proc = subprocess.run(patch_ctl_argv("install", "--store", store, builds.modules[name]),
                                  env=dict(patch_ctl_env(), PYTHONHASHSEED=seed), capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr
        indexes.append((store / "index.json").read_bytes())
    assert indexes[0] == indexes[1]
    assert json.loads(indexes[0])["format"] == "patch-build-store"


def test_trusted_keys(builds, store, tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    public = Ed25519PrivateKey.generate().public_key()
    (keys / "ops.pem").write_bytes(public.public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo))
    assert_one_line_error(patch_ctl("install", "--store", store, "--trusted-keys", keys, builds.modules["incr-fix"]),
                          1, "incr-fix.kpatch", "unsigned")
    assert not (store / "index.json").exists()


def test_bad_modules(builds, store, tmp_path):
    text = tmp_path / "notes.kpatch"
    text.write_text("not a module\n")
    assert_one_line_error(patch_ctl("install", "--store", store, text), 2, "notes.kpatch")
    tampered = tmp_path / "incr-fix.kpatch"
    data = bytearray(builds.modules["incr-fix"].read_bytes())
    data[-1] ^= 0xFF
    tampered.write_bytes(bytes(data))
    assert_one_line_error(patch_ctl("install", "--store", store, tampered), 2, "incr-fix.kpatch", "digest mismatch")
    other = tmp_path / "fix.txt"
    shutil.copy(builds.modules["incr-fix"], other)
    assert_one_line_error(patch_ctl("install", "--store", store, other), 2, "fix.txt", "NAME.kpatch or NAME.ko")
    nomodinfo = tmp_path / "plain.ko"
    subprocess.run(["gcc", "-c", "-x", "c", "-", "-o", str(nomodinfo)], input="int f(void) { return 0; }\n",
                   text=True, check=True)
    assert_one_line_error(patch_ctl("install", "--store", store, nomodinfo), 2, "plain.ko", "no .modinfo")
    truncated = tmp_path / "livepatch_t.ko"
    truncated.write_bytes(kernel_module(tmp_path / "k" / "livepatch_t.ko", "livepatch_t", "6.1.0-1-amd64")
                          .read_bytes()[:600])
    assert_one_line_error(patch_ctl("install", "--store", store, truncated), 2, "livepatch_t.ko", "truncated")
    assert not (store / "index.json").exists()


def test_unsafe_store_refused(builds, store):
    assert patch_ctl("install", "--store", store, builds.modules["incr-fix"]).returncode == 0
    os.chmod(store, 0o777)
    assert_one_line_error(patch_ctl("install", "--store", store, builds.modules["sum-fix"]), 1, str(store),
                          "writable by group or others")
    assert_one_line_error(patch_ctl("installed", "--store", store), 1, "writable by group or others")
    os.chmod(store, 0o700)
    os.chmod(store / "index.json", 0o666)
    assert_one_line_error(patch_ctl("installed", "--store", store), 1, "index.json", "writable by group or others")


def test_corrupt_index(builds, store):
    assert patch_ctl("install", "--store", store, builds.modules["incr-fix"]).returncode == 0
    index = store / "index.json"
    doc = json.loads(index.read_text())
    good = dict(doc["patches"][0])
    doc["patches"][0]["file"] = "../../etc/passwd"  # the index decides which file is read: checked
    index.write_text(json.dumps(doc))
    assert_one_line_error(patch_ctl("installed", "--store", store), 2, "index.json", "malformed store index entry")
    doc["patches"] = [good, good]
    index.write_text(json.dumps(doc))
    assert_one_line_error(patch_ctl("installed", "--store", store), 2, "index.json", "a name recorded twice")
    index.write_text("{not json")
    assert_one_line_error(patch_ctl("installed", "--store", store), 2, "index.json", "not JSON")
    index.write_text(json.dumps({"format": "other", "version": 1, "patches": []}))
    assert_one_line_error(patch_ctl("install", "--store", store, builds.modules["sum-fix"]), 2, "index.json",
                          "not a version 1 patch-build store index")
