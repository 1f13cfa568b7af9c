"""The integrity record of a user-space patch module: a digest of its own contents, optionally signed.

`.kpatch.integrity` is a non-allocated section of RECORD_SIZE bytes, reserved as zeros by the metadata
template and filled in once the module is linked (`seal`):

    char magic[8] "KPSHA256" · u8 digest[32] · u8 signer[32] · u8 signature[64]

`digest` is the SHA-256 of the whole file with those RECORD_SIZE bytes read as zeros: headers, sections,
symbols and relocations are all covered, without a canonical form to keep in step with the format.
`signer` is the raw Ed25519 public key and `signature` its signature of SIGNED_PREFIX + digest; both are
zero in an unsigned module. Every consumer calls `examine` before trusting anything inside the module.
"""
from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from patch_build.common.errors import InputError, Refused
from patch_build.common.inputfile import MIB, read_input
from patch_build.elfcore.constants import SHT_PROGBITS
from patch_build.elfcore.headers import check_header, section_names

SECTION = ".kpatch.integrity"
MAGIC = b"KPSHA256"
RECORD = struct.Struct("<8s32s32s64s")  # magic digest signer signature
RECORD_SIZE = RECORD.size
SIGNED_PREFIX = b"patch-build module digest v1\0"  # what is signed is never mistaken for another use of the key
MAX_MODULE_BYTES = 256 * MIB  # patch modules are kilobytes; nothing larger is read
MAX_KEY_BYTES = MIB

# cryptography is imported where a key or a signature is at hand: an unsigned module (and `patch-ctl list`)
# never needs it, and its import costs a short command a tenth of its time.
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


@dataclass
class Seal:
    """What a module's integrity record says and whether it holds."""

    digest: str  # the recorded SHA-256, hex; "" when the module records none
    intact: bool  # the contents hash to `digest`
    signer: str = ""  # fingerprint of the signing key; "" when unsigned
    signature_valid: bool = False  # the signature verifies with that key

    @property
    def problem(self) -> str | None:
        """Why the module cannot be trusted as it is, or None."""
        if not self.digest:
            return f"no digest recorded ({SECTION} is empty: the module was not sealed by patch-build)"
        if not self.intact:
            return f"digest mismatch: the module was modified after it was built (records sha256:{self.digest})"
        if self.signer and not self.signature_valid:
            return f"its signature does not verify with the key it names ({self.signer})"
        return None


def fingerprint(key: Ed25519PublicKey | bytes) -> str:
    """`sha256:HEX` of the raw 32-byte public key."""
    if isinstance(key, bytes):
        raw = key
    else:
        from cryptography.hazmat.primitives import serialization

        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def read_module_bytes(path: str | os.PathLike) -> bytes:
    """The module file's bytes: a regular file of at most MAX_MODULE_BYTES."""
    return read_input(path, "patch module", MAX_MODULE_BYTES)


def _record_offset(path: str, data: bytes) -> int:
    """File offset of the integrity record; InputError when the module has no well-formed one."""
    name = os.path.basename(path)
    headers = check_header(path, data)  # bounds of every section, the section name table included
    found = [h for h, section in zip(headers, section_names(path, data, headers)) if section == SECTION]
    if not found:
        raise InputError(f"{name}: not a patch module (no {SECTION} section)")
    if len(found) > 1:
        raise InputError(f"{name}: {len(found)} {SECTION} sections, expected 1")
    record = found[0]
    # PROGBITS: its bytes are in the file (checked bounds)
    if record.type != SHT_PROGBITS or record.size != RECORD_SIZE:
        raise InputError(f"{name}: {SECTION} is not a {RECORD_SIZE}-byte PROGBITS section")
    return record.offset


def _digest(data: bytes, offset: int) -> bytes:
    h = hashlib.sha256()
    h.update(memoryview(data)[:offset])
    h.update(bytes(RECORD_SIZE))
    h.update(memoryview(data)[offset + RECORD_SIZE:])
    return h.digest()


def examine(path: str | os.PathLike, data: bytes) -> Seal:
    """Check the integrity record of the module whose bytes are `data`. InputError when it has none."""
    offset = _record_offset(os.fspath(path), data)
    magic, digest, signer, signature = RECORD.unpack_from(data, offset)
    if magic != MAGIC:
        return Seal(digest="", intact=False)
    seal = Seal(digest=digest.hex(), intact=_digest(data, offset) == digest)
    if signer != bytes(32) or signature != bytes(64):
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        seal.signer = fingerprint(signer)
        try:
            Ed25519PublicKey.from_public_bytes(signer).verify(signature, SIGNED_PREFIX + digest)
            seal.signature_valid = True
        except (InvalidSignature, ValueError):
            pass
    return seal


def seal(path: str | os.PathLike, key: Ed25519PrivateKey | None = None) -> Seal:
    """Write the digest of the module at `path` (and, with `key`, its signature) into its integrity record."""
    data = bytearray(read_module_bytes(path))
    offset = _record_offset(os.fspath(path), bytes(data))
    digest = _digest(bytes(data), offset)
    signer, signature = bytes(32), bytes(64)
    if key is not None:
        from cryptography.hazmat.primitives import serialization

        signer = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        signature = key.sign(SIGNED_PREFIX + digest)
    record = RECORD.pack(MAGIC, digest, signer, signature)
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(record)
    data[offset:offset + RECORD_SIZE] = record
    return examine(path, bytes(data))


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in PEM file `path` (unencrypted PKCS#8, as `openssl genpkey -algorithm ed25519`
    writes it)."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pem = read_input(path, "PEM private key", MAX_KEY_BYTES)
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise InputError(f"signing key {path}: encrypted keys are not supported") from None
    except (ValueError, UnsupportedAlgorithm):
        raise InputError(f"signing key {path}: not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"signing key {path}: not an Ed25519 key")
    return key


def load_trusted_keys(directory: Path) -> dict[str, Ed25519PublicKey]:
    """The Ed25519 public keys in the `*.pem` files of `directory`, by fingerprint."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if not directory.is_dir():
        raise InputError(f"trusted keys {directory}: no such directory")
    keys = {}
    for path in sorted(directory.glob("*.pem")):
        pem = read_input(path, "PEM public key", MAX_KEY_BYTES)
        try:
            key = serialization.load_pem_public_key(pem)
        except (ValueError, UnsupportedAlgorithm):
            raise InputError(f"trusted key {path}: not a PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise InputError(f"trusted key {path}: not an Ed25519 key")
        keys[fingerprint(key)] = key
    if not keys:
        raise InputError(f"trusted keys {directory}: no public key (*.pem) in it")
    return keys


def check_trusted(name: str, seal: Seal, trusted: dict[str, Ed25519PublicKey]) -> None:
    """Refuse module `name` unless a key of `trusted` signed it (its seal otherwise valid)."""
    if not seal.signer:
        raise Refused([(name, "the module is unsigned and trusted keys were given")])
    if seal.signer not in trusted:
        raise Refused([(name, f"signed by {seal.signer}, which is not among the trusted keys")])
    if not seal.signature_valid:
        raise Refused([(name, f"its signature does not verify with trusted key {seal.signer}")])
