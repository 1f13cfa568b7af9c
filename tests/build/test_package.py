"""`patch-build --package deb`: a Debian package that lintian accepts and that installs into, upgrades in and
removes from a dpkg root (`dpkg --root`), its maintainer scripts running the real patch-ctl on its store."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from buildenv import FIXTURES, assert_one_line_error, copy_fixture, make
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.dpkgroot import DpkgRoot
from support.kmodule import kernel_module

from patch_build.kbuild.options import BuildResult
from patch_build.kbuild.package import build_deb
from patch_build.loader.boot import loader_script

pytestmark = pytest.mark.slow  # builds modules and Debian packages, runs lintian and dpkg

EPOCH = "1700000000"


@pytest.fixture
def packaging(monkeypatch):
    monkeypatch.setenv("DEBEMAIL", "ops@example.org")
    monkeypatch.setenv("DEBFULLNAME", "Ops Team")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)


def lintian(deb: Path) -> list[str]:
    """lintian's tags for `deb`; none may be an error."""
    proc = subprocess.run(["lintian", "--no-cfg", str(deb)], capture_output=True, text=True, timeout=300)
    tags = proc.stdout.splitlines()
    assert proc.returncode == 0 and not [t for t in tags if t.startswith("E:")], proc.stdout + proc.stderr
    return tags


def test_user_space_package(patch_build, packaging, tmp_path, monkeypatch):
    src = copy_fixture("cprog", tmp_path)
    make(src)
    patch = FIXTURES / "cprog-fix.patch"
    run = patch_build("-s", src, "-t", "prog", "-o", tmp_path / "v1", "--package", "deb", "--package-version", "1.0",
                      patch)
    assert run.returncode == 0, run.stderr
    deb = tmp_path / "v1" / "patch-build-cprog-fix_1.0_amd64.deb"
    assert f"wrote {deb}" in run.stderr

    # same inputs, same bytes, whatever the hash seed
    monkeypatch.setenv("PYTHONHASHSEED", "7")
    again = patch_build("-s", src, "-t", "prog", "-o", tmp_path / "again", "--package", "deb",
                        "--package-version", "1.0", patch)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again" / deb.name).read_bytes() == deb.read_bytes()

    fields = subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True, text=True, check=True).stdout
    assert "Package: patch-build-cprog-fix\nVersion: 1.0\nArchitecture: amd64\n" in fields
    assert "Maintainer: Ops Team <ops@example.org>" in fields
    contents = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    for path in ("./usr/lib/patch-build/packages/cprog-fix/cprog-fix.kpatch",
                 "./usr/share/doc/patch-build-cprog-fix/cprog-fix.report.json",
                 "./usr/share/doc/patch-build-cprog-fix/cprog-fix.report.html",
                 "./usr/share/doc/patch-build-cprog-fix/copyright",
                 "./lib/systemd/system/patch-build-cprog-fix.service"):
        assert path in contents, contents
    lintian(deb)
    # the package's service: `patch-ctl daemon --only cprog-fix`, a unit systemd accepts
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path / "unpacked")], check=True)
    unit = tmp_path / "unpacked/lib/systemd/system/patch-build-cprog-fix.service"
    assert "ExecStart=/usr/bin/env patch-ctl daemon --only cprog-fix\n" in unit.read_text()
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert verify.returncode == 0 and not verify.stderr, verify.stderr

    # v2: the same module name, other contents (signed): an upgrade replaces what v1 installed
    key = tmp_path / "key.pem"
    key.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    run = patch_build("-s", src, "-t", "prog", "-o", tmp_path / "v2", "--package", "deb", "--package-version", "2.0",
                      "--sign-key", key, patch)
    assert run.returncode == 0, run.stderr
    deb2 = tmp_path / "v2" / "patch-build-cprog-fix_2.0_amd64.deb"

    system = DpkgRoot(tmp_path)
    system.dpkg("-i", deb)
    assert system.status("patch-build-cprog-fix") == "install ok installed"
    wanted = system.root / "etc/systemd/system/multi-user.target.wants/patch-build-cprog-fix.service"
    assert os.path.lexists(wanted)  # enabled in the root, for its first boot
    [entry] = system.store.entries()
    assert (entry.name, entry.kind, entry.signer) == ("cprog-fix", "user", "")
    assert system.store.verify(entry).read_bytes() == (tmp_path / "v1" / "cprog-fix.kpatch").read_bytes()
    assert oct(system.store.root.stat().st_mode & 0o777) == "0o700"

    system.dpkg("-i", deb2)
    [entry] = system.store.entries()
    assert entry.signer.startswith("sha256:")
    assert system.store.verify(entry).read_bytes() == (tmp_path / "v2" / "cprog-fix.kpatch").read_bytes()

    system.dpkg("-r", "patch-build-cprog-fix")
    assert system.status("patch-build-cprog-fix") == ""  # no conffiles: dpkg forgets the package
    assert not os.path.lexists(wanted)
    assert system.store.entries() == []
    assert list((system.store.root / "modules").iterdir()) == []
    assert not (system.root / "usr/lib/patch-build/packages/cprog-fix").exists()


def test_kernel_package(packaging, tmp_path):
    """The store keys a kernel module by its release; the package ships the boot loader of kernel patches and
    a boot unit that runs it, enabled in the root it is installed into; the postinst loads the module (with
    that loader) only on the running kernel of its release, and never when installing into another root."""
    ko = kernel_module(tmp_path / "livepatch_fix.ko", "livepatch_fix", "6.1.0-99-amd64")
    report = tmp_path / "livepatch_fix.report.json"
    report.write_text(json.dumps({"status": "built"}))
    result = BuildResult(module=ko, report_json=report, name="livepatch_fix", kind="kernel")
    deb = build_deb(result, tmp_path / "out", int(EPOCH))
    assert deb.name.startswith("patch-build-livepatch-fix_0+") and deb.name.endswith("_amd64.deb")
    postinst = subprocess.run(["dpkg-deb", "-I", str(deb), "postinst"], capture_output=True, text=True,
                              check=True).stdout
    assert '[ -z "$DPKG_ROOT" ] && [ "$(uname -r)" = "6.1.0-99-amd64" ]' in postinst
    assert ('/usr/lib/patch-build/packages/livepatch_fix/load-kernel-patches --store "$STORE" --only livepatch_fix'
            in postinst)
    assert subprocess.run(["sh", "-n"], input=postinst, text=True).returncode == 0
    lintian(deb)

    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path / "unpacked")], check=True)
    shipped = tmp_path / "unpacked/usr/lib/patch-build/packages/livepatch_fix/load-kernel-patches"
    assert shipped.read_bytes() == loader_script() and shipped.stat().st_mode & 0o777 == 0o755
    unit = tmp_path / "unpacked/lib/systemd/system/patch-build-livepatch-fix.service"
    text = unit.read_text()
    assert "ExecStart=/bin/sh /usr/lib/patch-build/packages/livepatch_fix/load-kernel-patches\n" in text
    assert "Type=oneshot\nRemainAfterExit=yes\n" in text and "DefaultDependencies=no\n" in text
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert verify.returncode == 0 and not verify.stderr, verify.stderr

    system = DpkgRoot(tmp_path)
    out = system.dpkg("-i", deb)
    assert "loading" not in out and "loaded" not in out
    assert [e.name for e in system.store.for_kernel("6.1.0-99-amd64")] == ["livepatch_fix"]
    wanted = system.root / "etc/systemd/system/multi-user.target.wants/patch-build-livepatch-fix.service"
    assert os.readlink(wanted) == "/lib/systemd/system/patch-build-livepatch-fix.service"
    system.dpkg("-r", "patch-build-livepatch-fix")
    assert system.store.entries() == []
    assert not os.path.lexists(wanted)


def test_postinst_without_patch_ctl_fails_clearly(packaging, tmp_path):
    ko = kernel_module(tmp_path / "livepatch_fix.ko", "livepatch_fix", "6.1.0-99-amd64")
    deb = build_deb(BuildResult(module=ko, report_json=None, name="livepatch_fix", kind="kernel"), tmp_path / "out",
                    int(EPOCH), "3")
    system = DpkgRoot(tmp_path)
    system.env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"  # dpkg's own tools, no patch-ctl
    proc = subprocess.run(["dpkg", f"--root={system.root}", "--force-script-chrootless", "-i", str(deb)],
                          capture_output=True, text=True, env=system.env, timeout=120)
    assert proc.returncode != 0
    assert "patch-ctl is not on PATH: install patch-build, then run dpkg --configure -a" in proc.stderr


def test_bad_package_options(patch_build, packaging, tmp_path, monkeypatch):
    src = tmp_path / "nowhere"  # refused before any build
    patch = FIXTURES / "cprog-fix.patch"
    assert_one_line_error(patch_build("-s", src, "--package", "rpm", patch), 2, "--package rpm", "deb")
    assert_one_line_error(patch_build("-s", src, "--package", "deb", "--package-version", "v1", patch), 2,
                          "--package-version 'v1'", "not a Debian version")
    assert_one_line_error(patch_build("-s", src, "--package-version", "1", patch), 2, "needs --package deb")
    monkeypatch.delenv("DEBEMAIL")
    assert_one_line_error(patch_build("-s", src, "--package", "deb", patch), 2, "set DEBEMAIL")
