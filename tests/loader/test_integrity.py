"""Malformed, tampered and signed modules (issue 9): patch-ctl checks the module's digest, its relocations and
its claims about the target before writing anything, refuses what fails (one line, exit 1 or 2) and leaves
the target running unpatched. Modules are edited field by field; `reseal` recomputes the digest, as a
forger would, so the checks behind it are reached."""
from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from elftools.elf.elffile import ELFFile

from patch_build.patchformat import integrity
from patch_build.patchformat.sections import FUNCS, OFFSET
from livetarget import FIXTURE, Server, assert_one_line_error, patch_ctl, patch_ctl_env

RELA_OFFSET, RELA_TYPE = 0, 8
SYM_VALUE = 8


def assert_untouched(server: Server) -> None:
    server.assert_running_untraced()
    assert server.patch_mappings() == []
    assert server.ask("INCR untouched") == ["VALUE 2"]  # still the buggy +2


def section_offset(data: bytes, name: str) -> int:
    return ELFFile(io.BytesIO(data)).get_section_by_name(name)["sh_offset"]


def symbol_offset(data: bytes, name: str) -> int:
    """File offset of the .symtab entry of `name`."""
    elf = ELFFile(io.BytesIO(data))
    symtab = elf.get_section_by_name(".symtab")
    index = next(i for i, s in enumerate(symtab.iter_symbols()) if s.name == name)
    return symtab["sh_offset"] + index * symtab["sh_entsize"]


def put(data: bytearray, at: int, value: int, size: int = 8) -> None:
    data[at:at + size] = value.to_bytes(size, "little")


def edited(module: Path, out: Path, edit, reseal: bool = True) -> Path:
    data = bytearray(module.read_bytes())
    edit(data)
    out.write_bytes(bytes(data))
    if reseal:
        integrity.seal(out)
    return out


def server_function(builds, name: str) -> tuple[int, int]:
    """Link-time address and size of function `name` in the deployed server."""
    with open(builds.deployed / "server", "rb") as f:
        sym = ELFFile(f).get_section_by_name(".symtab").get_symbol_by_name(name)[0]
        return sym["st_value"], sym["st_size"]


def load_base(pid: int) -> int:
    with open(f"/proc/{pid}/maps") as f:
        return int(next(l for l in f if l.rstrip().endswith("/server")).split("-")[0], 16)


# ---- relocations and symbols ------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, code, message", [
    ("r_offset", 0x10000, 2, "relocation at 0x10000 in .rela.text.cmd_incr lies outside .text.cmd_incr"),
    ("r_offset", 0xB2, 2, "lies outside .text.cmd_incr (180 bytes)"),  # a 4-byte field crossing the end
    ("r_type", 99, 2, "unsupported relocation type 99"),
])
def test_relocation_checked_against_its_section(builds, server, tmp_path, field, value, code, message):
    """Issue 9: a relocation whose offset lay outside its section was applied (exit 0), then the server
    segfaulted."""
    def edit(data):
        entry = section_offset(data, ".rela.text.cmd_incr")
        if field == "r_offset":
            put(data, entry + RELA_OFFSET, value)
        else:
            put(data, entry + RELA_TYPE, value, 4)

    bad = edited(builds.modules["incr-fix"], tmp_path / "bad.kpatch", edit)
    assert_one_line_error(patch_ctl("apply", "-p", server.pid, bad), code, message)
    assert_untouched(server)


def test_symbol_checked_against_its_section(builds, server, tmp_path):
    bad = edited(builds.modules["incr-fix"], tmp_path / "bad.kpatch",
                 lambda data: put(data, symbol_offset(data, "cmd_incr") + SYM_VALUE, 0x1000))
    assert_one_line_error(patch_ctl("apply", "-p", server.pid, bad), 2, "'cmd_incr'", "lies outside its section")
    assert_untouched(server)


def test_new_size_claim_checked(builds, server, tmp_path):
    bad = edited(builds.modules["incr-fix"], tmp_path / "bad.kpatch",
                 lambda data: put(data, section_offset(data, FUNCS) + OFFSET["new_size"], 4))
    assert_one_line_error(patch_ctl("apply", "-p", server.pid, bad), 2, "cmd_incr", "metadata says 4")
    assert_untouched(server)


# ---- the redirected function: named by the module, found in the target's own symbol table ---------------

def test_edited_old_addr_is_refused_by_name(builds, server, tmp_path):
    """Issue 9: a module whose old_addr was edited redirected another function than the one it names, and
    `list` named the wrong one."""
    other, _ = server_function(builds, "cmd_set")
    bad = edited(builds.modules["incr-fix"], tmp_path / "bad.kpatch",
                 lambda data: put(data, section_offset(data, FUNCS) + OFFSET["old_addr"], other))
    assert_one_line_error(patch_ctl("apply", "-p", server.pid, bad), 1, "cmd_incr",
                          f"gives its address as {other:#x}")
    assert_untouched(server)
    assert server.ask("SET k v") == ["OK"]  # cmd_set is still itself


def test_agreeing_old_addr_applies(builds, server, tmp_path):
    addr, _ = server_function(builds, "cmd_incr")
    good = edited(builds.modules["incr-fix"], tmp_path / "good.kpatch",
                  lambda data: put(data, section_offset(data, FUNCS) + OFFSET["old_addr"], addr))
    run = patch_ctl("apply", "-p", server.pid, good)
    assert run.returncode == 0, run.stderr
    assert server.ask("SET n 1", "INCR n") == ["OK", "VALUE 2"]  # the fix: +1
    listed = patch_ctl("list", "-p", server.pid).stdout
    assert f"server:cmd_incr {load_base(server.pid) + addr:#x} -> " in listed
    assert patch_ctl("revert", "-p", server.pid, "--all").returncode == 0
    assert_untouched(server)


@pytest.mark.parametrize("old_size", [0, 181])
def test_old_size_must_match(builds, server, tmp_path, old_size):
    _, size = server_function(builds, "cmd_incr")
    bad = edited(builds.modules["incr-fix"], tmp_path / "bad.kpatch",
                 lambda data: put(data, section_offset(data, FUNCS) + OFFSET["old_size"], old_size))
    assert_one_line_error(patch_ctl("apply", "-p", server.pid, bad), 1, "cmd_incr",
                          f"is {size} bytes in the process, {old_size} in the module's build")
    assert_untouched(server)


# ---- digest --------------------------------------------------------------------------------------------

def test_tampered_body_is_refused(builds, server, tmp_path):
    """Issue 9: a module with a tampered function body applied silently."""
    def edit(data):
        at = section_offset(data, ".text.cmd_incr") + 0x30
        data[at] ^= 0xFF

    bad = edited(builds.modules["incr-fix"], tmp_path / "bad.kpatch", edit, reseal=False)
    run = patch_ctl("info", bad)
    assert run.returncode == 2
    assert "(DOES NOT MATCH the contents)" in run.stdout and "problem: digest mismatch" in run.stdout
    assert_one_line_error(patch_ctl("apply", "-p", server.pid, bad), 2, "bad.kpatch", "digest mismatch")
    assert_untouched(server)


def test_unsealed_module_is_refused(builds, server, tmp_path):
    def edit(data):
        at = section_offset(data, integrity.SECTION)
        data[at:at + integrity.RECORD_SIZE] = bytes(integrity.RECORD_SIZE)

    bad = edited(builds.modules["incr-fix"], tmp_path / "bad.kpatch", edit, reseal=False)
    assert_one_line_error(patch_ctl("apply", "-p", server.pid, bad), 2, "no digest recorded")
    assert_untouched(server)


def test_info_shows_the_digest(builds):
    module = builds.modules["incr-fix"]
    run = patch_ctl("info", module)
    assert run.returncode == 0, run.stderr
    digest = integrity.examine(module, module.read_bytes()).digest
    assert len(digest) == 64
    assert f"digest sha256:{digest} (verified)\nunsigned\n" in run.stdout
    assert patch_ctl("info", "--json", module).stdout.count(digest) == 1


# ---- signatures ----------------------------------------------------------------------------------------

def write_key(key: Ed25519PrivateKey, private: Path, public: Path) -> None:
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """A signing key (its public half in `trusted/`) and another key nobody trusts."""
    root = tmp_path_factory.mktemp("keys")
    (root / "trusted").mkdir()
    (root / "other").mkdir()
    ours, theirs = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    write_key(ours, root / "signing.pem", root / "trusted" / "ours.pem")
    write_key(theirs, root / "other.pem", root / "other" / "theirs.pem")
    return root


def patch_build(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "patch_build.kbuild", *map(str, args)], capture_output=True, text=True,
                          env=patch_ctl_env(), timeout=300)


@pytest.fixture(scope="module")
def signed(builds, keys, tmp_path_factory) -> Path:
    """incr-fix built by `patch-build --sign-key`."""
    out = tmp_path_factory.mktemp("signed")
    proc = patch_build("-s", builds.src, "-t", "server", "--target-binary", builds.deployed / "server",
                       "-o", out, "-j", "1", "--sign-key", keys / "signing.pem", FIXTURE / "incr-fix.patch")
    assert proc.returncode == 0, proc.stderr
    return out / "incr-fix.kpatch"


def test_signed_and_trusted_applies(signed, keys, server):
    fpr = integrity.fingerprint(serialization.load_pem_public_key((keys / "trusted" / "ours.pem").read_bytes()))
    run = patch_ctl("info", signed)
    assert run.returncode == 0, run.stderr
    assert f"signed by {fpr} (signature verified)" in run.stdout
    run = patch_ctl("apply", "-p", server.pid, "--trusted-keys", keys / "trusted", signed)
    assert run.returncode == 0, run.stderr
    assert server.ask("SET n 1", "INCR n") == ["OK", "VALUE 2"]
    assert patch_ctl("revert", "-p", server.pid, "--all").returncode == 0
    assert_untouched(server)


def test_unsigned_refused_with_trusted_keys(builds, keys, server):
    run = patch_ctl("apply", "-p", server.pid, "--trusted-keys", keys / "trusted", builds.modules["incr-fix"])
    assert_one_line_error(run, 1, "incr-fix", "unsigned")
    assert_untouched(server)


def test_signed_by_another_key_refused(signed, keys, server):
    run = patch_ctl("apply", "-p", server.pid, "--trusted-keys", keys / "other", signed)
    assert_one_line_error(run, 1, "incr-fix", "not among the trusted keys")
    assert_untouched(server)


def test_forged_signature_refused(signed, keys, server, tmp_path):
    def edit(data):
        at = section_offset(data, integrity.SECTION) + integrity.RECORD_SIZE - 1  # the signature's last byte
        data[at] ^= 1

    bad = edited(signed, tmp_path / "bad.kpatch", edit, reseal=False)
    run = patch_ctl("apply", "-p", server.pid, "--trusted-keys", keys / "trusted", bad)
    assert_one_line_error(run, 2, "signature does not verify")
    assert_untouched(server)


def test_resigned_by_another_key_refused(signed, keys, server, tmp_path):
    """A forger who re-signs a modified module with a key of their own is not trusted."""
    key = serialization.load_pem_private_key((keys / "other.pem").read_bytes(), password=None)
    bad = edited(signed, tmp_path / "bad.kpatch", lambda data: None, reseal=False)
    integrity.seal(bad, key)
    run = patch_ctl("apply", "-p", server.pid, "--trusted-keys", keys / "trusted", bad)
    assert_one_line_error(run, 1, "not among the trusted keys")
    assert_untouched(server)


def test_bad_key_files(builds, keys, server, tmp_path):
    module = builds.modules["incr-fix"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(patch_ctl("apply", "-p", server.pid, "--trusted-keys", empty, module), 2,
                          "no public key")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "key.pem").write_text("not a key\n")
    assert_one_line_error(patch_ctl("apply", "-p", server.pid, "--trusted-keys", junk, module), 2,
                          "key.pem", "not a PEM public key")
    assert_untouched(server)
    proc = patch_build("-s", builds.src, "-t", "server", "-o", tmp_path, "--sign-key", junk / "key.pem",
                       FIXTURE / "incr-fix.patch")
    assert proc.returncode == 2, proc.stderr
    assert "patch-build: error: signing key" in proc.stderr and "not a PEM private key" in proc.stderr
    assert not list(tmp_path.glob("*.kpatch"))


def test_kernel_sign_key_needs_its_certificate(keys, tmp_path):
    """--sign-key on a Linux tree signs the `.ko` as scripts/sign-file does, which takes the key's X.509
    certificate too (tests/kernel/test_build.py signs one): alone, it is refused, not ignored."""
    tree = tmp_path / "linux"
    (tree / "arch" / "x86").mkdir(parents=True)
    (tree / "Kbuild").write_text("")
    (tree / "Makefile").write_text("VERSION = 6\n")
    proc = patch_build("-s", tree, "--sign-key", keys / "signing.pem", FIXTURE / "incr-fix.patch")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == ("patch-build: error: a kernel module is signed with --sign-key "
                                                    "KEY and --sign-cert CERT: give both")


# ---- what patch-ctl prints -----------------------------------------------------------------------------

def test_control_characters_from_a_module_are_escaped(builds, server, tmp_path):
    """Issue 9 item 5: control characters from a module were printed raw to the terminal."""
    def edit(data):
        at = data.index(b"incr-fix\0")  # the module name in .kpatch.strings
        data[at:at + 8] = b"in\x1b[31mx"

    odd = edited(builds.modules["incr-fix"], tmp_path / "odd.kpatch", edit)
    for run in (patch_ctl("info", odd), patch_ctl("apply", "-p", server.pid, odd),
                patch_ctl("list", "-p", server.pid), patch_ctl("revert", "-p", server.pid, "--all")):
        assert run.returncode == 0, run.stderr
        assert "\x1b" not in run.stdout and "in\\x1b[31mx" in run.stdout, run.stdout
    assert_untouched(server)
