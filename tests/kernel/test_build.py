"""How patch-build picks what to compile in a kernel tree, checked through its exit codes and messages."""
from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from patch_build.kbuild.kernel_target import kernel_release
from patch_build.kbuild.options import BuildOptions

pytestmark = [pytest.mark.kernel]


def test_header_change_rebuilds_the_units_including_it(patch_build, tmp_path):
    # fs/proc/fd.h: proc_fd() rewritten with the same meaning; fd.c and base.c include it.
    built = patch_build("header-noop.patch", tmp_path)
    assert built.returncode == 3, built.stderr
    assert "building 2 original unit(s)" in built.stderr
    assert "no functional change: fs/proc/base.c, fs/proc/fd.c compiled to the same code" in built.stderr
    assert not list(tmp_path.glob("*.ko"))


def test_new_code_nothing_calls_is_no_change(patch_build, tmp_path):
    # A new global function and no changed one, no livepatch callback: the module would patch nothing.
    built = patch_build("new-code-only.patch", tmp_path)
    assert built.returncode == 3, built.stderr
    assert "no function to replace and no livepatch callback" in built.stderr
    assert not list(tmp_path.glob("*.ko"))


def test_kpatch_ignore_function_keeps_init_code_out(patch_build, tmp_path):
    # init-function.patch's change to __init proc_cmdline_init (refused alone, test_rejections.py) with a
    # change to cmdline_proc_show, and KPATCH_IGNORE_FUNCTION(proc_cmdline_init) from kpatch-macros.h.
    built = patch_build("kpatch-ignore-init.patch", tmp_path)
    assert built.ok, built.stderr
    report = json.loads(built.module.with_suffix(".report.json").read_text())
    [obj] = report["objects"]
    assert {f["name"]: f["status"] for f in obj["functions"]} == {"cmdline_proc_show": "changed"}
    assert [w["message"] for w in obj["warnings"]] == [
        "function proc_cmdline_init changed but is not patched: the patch says to ignore it (KPATCH_IGNORE_*)"]


def test_target_filter(patch_build, tmp_path):
    # -t names the objects to patch: a vmlinux fix is nothing for binfmt_misc.
    built = patch_build("cmdline-prefix.patch", tmp_path, "-t", "binfmt_misc")
    assert built.returncode == 3, built.stderr
    assert "fs/proc/cmdline.c belongs to vmlinux, not a -t target" in built.stderr
    assert not list(tmp_path.glob("*.ko"))


SIGNING_CONFIG = """[ req ]
default_bits = 2048
distinguished_name = req_distinguished_name
prompt = no
x509_extensions = exts
[ req_distinguished_name ]
CN = patch-build test signing key
[ exts ]
basicConstraints = critical,CA:FALSE
keyUsage = digitalSignature
subjectKeyIdentifier = hash
"""


def test_signed_module(patch_build, tmp_path):
    # A throw-away key and self-signed certificate, made as the kernel's certs/Makefile makes its own.
    (tmp_path / "x509.genkey").write_text(SIGNING_CONFIG)
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-new", "-nodes", "-utf8", "-sha256", "-days", "3650", "-batch", "-x509",
                    "-config", tmp_path / "x509.genkey", "-outform", "PEM", "-out", cert, "-keyout", key],
                   check=True, capture_output=True)
    serial = subprocess.run(["openssl", "x509", "-in", cert, "-noout", "-serial"], check=True, capture_output=True,
                            text=True).stdout.strip().split("=", 1)[1]
    key_id = ":".join(serial[i:i + 2] for i in range(0, len(serial), 2))

    half = patch_build("cmdline-prefix.patch", tmp_path / "half", "--sign-key", str(key))
    assert half.returncode == 2 and "give both" in half.stderr.splitlines()[-1], half.stderr

    built = patch_build("cmdline-prefix.patch", tmp_path / "out", "--sign-key", str(key), "--sign-cert", str(cert))
    assert built.ok, built.stderr

    def modinfo(field: str) -> str:
        return subprocess.run(["modinfo", "-F", field, built.module], check=True, capture_output=True,
                              text=True).stdout.strip()

    assert modinfo("signer") == "patch-build test signing key"
    assert modinfo("sig_key") == key_id
    assert modinfo("sig_hashalgo") == "sha256"
    report = json.loads(built.module.with_suffix(".report.json").read_text())
    assert report["details"]["module signature"] == f"sha256, signed by patch-build test signing key (key {key_id})"


def test_uncompressed_vmlinux_gives_the_release(kenv, patch_build, tmp_path):
    # -v read the release from a closed map (TypeError). The image's vmlinux has no symbol table (that is in
    # the -dbg package): the build stops there, as bad input, after the release was read.
    vmlinux = tmp_path / "vmlinux"
    with open(vmlinux, "wb") as f:
        subprocess.run(["sh", os.fspath(kenv.source / "scripts" / "extract-vmlinux"), os.fspath(kenv.vmlinuz)],
                       stdout=f, stderr=subprocess.DEVNULL, check=True)
    options = BuildOptions(patches=[], srcdir=kenv.source, vmlinux=vmlinux)
    assert kernel_release(options) == kenv.release
    built = patch_build("cmdline-prefix.patch", tmp_path, "-v", os.fspath(vmlinux))
    assert built.returncode == 2, built.stderr
    errors = [line for line in built.stderr.splitlines() if "error:" in line]
    assert errors == [f"patch-build: error: {vmlinux}: has no symbol table"], built.stderr


def test_changed_function_is_mapped_to_its_hunk(patch_build, tmp_path):
    # -ffunction-sections puts every function at offset 0 of its own section: the line table must still tell
    # meminfo_proc_show's lines from its neighbours'. --only-explained keeps it (a hunk explains it).
    built = patch_build("meminfo-string.patch", tmp_path, "--only-explained")
    assert built.ok, built.stderr
    assert "left out" not in built.stderr
    report = json.loads(built.module.with_suffix(".report.json").read_text())
    [obj] = report["objects"]
    assert (obj["source"], obj["original"], obj["patched"]) == ("fs/proc/meminfo.c",) + ("fs/proc/meminfo.o",) * 2
    [change] = [f for f in obj["functions"] if f["status"] == "changed"]
    assert change["name"] == "meminfo_proc_show" and change["unexplained"] is None and not change["left_out"]
    assert change["explained_by"] == [{"hunk": 1, "how": "added own line(s) 131; removed own line(s) 131"}]
    assert report["hunks"][0]["functions"] == [{"object": 1, "symbol": "meminfo_proc_show"}]
    for suffix in (".report.json", ".report.md", ".report.html"):
        assert not re.search(r"\b\d{4}-meminfo\.o\b", built.module.with_suffix(suffix).read_text())
