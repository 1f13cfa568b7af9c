"""Signing a kernel livepatch module as the kernel's own modules are signed (issue 9): the headers package's
`scripts/sign-file` appends a PKCS#7 signature made with KEY, naming CERT's issuer and serial number, which
is what a kernel with Secure Boot or `module.sig_enforce=1` checks against its trusted keys."""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from patch_build.common.errors import InputError
from patch_build.common.kconfig import auto_conf

CERT_MAX = 1 << 20  # an X.509 certificate is a few KiB
DEFAULT_HASH = "sha256"


@dataclass(frozen=True)
class Signer:
    key: Path
    cert: Path
    name: str  # the certificate issuer's common name: what `modinfo` shows as signer
    key_id: str  # its serial number, colon-separated hex: `modinfo`'s sig_key

    def describe(self, hash_algo: str) -> str:
        return f"{hash_algo}, signed by {self.name} (key {self.key_id})"


def read_signer(key: Path | None, cert: Path | None) -> Signer | None:
    """The signer given by --sign-key/--sign-cert (None when neither); InputError naming what is wrong."""
    if key is None and cert is None:
        return None
    if key is None or cert is None:
        raise InputError("a kernel module is signed with --sign-key KEY and --sign-cert CERT: give both")
    for what, path in (("--sign-key", key), ("--sign-cert", cert)):
        if not path.is_file():
            raise InputError(f"{what} {path}: no such file")
    with open(cert, "rb") as f:
        data = f.read(CERT_MAX + 1)
    if len(data) > CERT_MAX:
        raise InputError(f"--sign-cert {cert}: larger than {CERT_MAX} bytes, not a certificate")
    try:
        parsed = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    except ValueError as e:
        raise InputError(f"--sign-cert {cert}: not an X.509 certificate (PEM or DER): {e}") from None
    names = parsed.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(names[0].value) if names else parsed.issuer.rfc4514_string()
    serial = parsed.serial_number
    key_id = ":".join(f"{b:02X}" for b in serial.to_bytes(max(1, (serial.bit_length() + 7) // 8), "big"))
    return Signer(key=key, cert=cert, name=name, key_id=key_id)


def sign_file_tool(headers: Path) -> Path:
    tool = headers / "scripts" / "sign-file"
    if not os.access(tool, os.X_OK):
        raise InputError(f"kernel headers {headers}: no scripts/sign-file to sign the module with")
    return tool


def signing_hash(headers: Path) -> str:
    """The kernel's CONFIG_MODULE_SIG_HASH, as its own modules are signed."""
    return auto_conf(headers).get("CONFIG_MODULE_SIG_HASH") or DEFAULT_HASH


def sign_module(module: Path, signer: Signer, headers: Path, hash_algo: str) -> None:
    """Append the signature to `module` in place (`sign-file HASH KEY CERT MODULE`)."""
    proc = subprocess.run([os.fspath(sign_file_tool(headers)), hash_algo, os.fspath(signer.key),
                           os.fspath(signer.cert), os.fspath(module)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    if proc.returncode:
        # sign-file says where in its source it failed, then OpenSSL's reasons
        lines = [l.strip() for l in (proc.stderr + proc.stdout).splitlines()
                 if l.strip() and not l.startswith("At main.c")]
        why = lines[0].lstrip("- ") if lines else f"sign-file exited {proc.returncode}"
        raise InputError(f"signing {module.name} with --sign-key {signer.key} failed: {why}")
