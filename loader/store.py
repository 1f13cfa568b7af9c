"""The local store of installed patches (`patch-ctl install/uninstall/installed`; issue 15).

Patches that stay applied live here, keyed by what they target: user-space modules (`NAME.kpatch`) by the
build-ids of their targets, kernel modules (`NAME.ko`) by the kernel release of their vermagic. A daemon
asks `Store.for_build_id` / `Store.for_kernel` and calls `Store.verify` before each use. For each kernel
release the store also writes a plain-text manifest, `kernel/RELEASE`, that the boot loader (a shell
script: loader/boot.py) reads where no Python runs, an initramfs. Layout, index and manifest formats,
permissions: docs/design.md ("Patch store").
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path

from patch_build.common.errors import InputError, Refused
from patch_build.common.inputfile import MIB, read_input
from patch_build.elfcore.headers import check_header, section_names
from patch_build.patchformat.integrity import check_trusted, read_module_bytes
from patch_build.patchformat.module import read_module

DEFAULT_ROOT = Path("/var/lib/patch-build")
ROOT_ENV = "PATCH_BUILD_STORE"
INDEX = "index.json"
MODULES = "modules"
KERNEL = "kernel"  # the per-release manifests
LOCK = ".lock"
INDEX_FORMAT = "patch-build-store"
INDEX_VERSION = 1
MAX_INDEX_BYTES = 16 * MIB
MAX_MODINFO_BYTES = MIB
SUFFIXES = {"user": ".kpatch", "kernel": ".ko"}
KERNEL_SIGNATURE = b"~Module signature appended~\n"  # what scripts/sign-file appends last
# A module name becomes a file name in the store: no path separators, no leading dot.
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}")
SHA256 = re.compile(r"[0-9a-f]{64}")
# A kernel release (`uname -r`) names a manifest file: no path separators, no leading dot, no white space.
RELEASE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]{0,127}")


@dataclass
class Installed:
    """One installed patch, as the index records it."""

    name: str  # the module's own name (its metadata; a kernel module's modinfo name)
    kind: str  # "user" | "kernel"
    file: str  # relative to the store root: modules/NAME-SHA16.kpatch|.ko
    sha256: str  # of the whole file, checked on every use
    targets: list[dict] = field(default_factory=list)  # user: [{"name", "build_id"}]
    kernel_release: str = ""  # kernel: the release of its vermagic
    signer: str = ""  # user: the Ed25519 key's fingerprint; kernel: "module signature" when sign-file signed it


def store_root(root: str | os.PathLike | None = None) -> Path:
    """The store directory: `root` if given, else $PATCH_BUILD_STORE, else /var/lib/patch-build."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get(ROOT_ENV) or DEFAULT_ROOT)


def _modinfo(base: str, data: bytes) -> dict[str, str]:
    """The key=value strings of a kernel module's `.modinfo` section."""
    headers = check_header(base, data)  # an x86-64 relocatable object whose sections lie inside the file
    names = section_names(base, data, headers)
    if ".modinfo" not in names:
        raise InputError(f"{base}: not a kernel module (no .modinfo section)")
    modinfo = headers[names.index(".modinfo")]
    if modinfo.size > MAX_MODINFO_BYTES:
        raise InputError(f"{base}: .modinfo larger than {MAX_MODINFO_BYTES} bytes")
    raw = data[modinfo.offset:modinfo.offset + modinfo.size]
    info = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.decode("utf-8", "replace").partition("=")
        if sep:
            info.setdefault(key, value)
    return info


def describe(path: str | os.PathLike, data: bytes, trusted=None) -> Installed:
    """What module file `path` (bytes `data`) would be installed as (`file` left empty). InputError for a
    malformed or corrupt module, Refused for one `trusted` keys did not sign (user space only)."""
    base = os.path.basename(path)
    sha = hashlib.sha256(data).hexdigest()
    if base.endswith(SUFFIXES["user"]):
        mod = read_module(path, data)
        if mod.problems:
            raise InputError(f"{base}: malformed patch module: {mod.problems[0]}")
        if trusted is not None:
            check_trusted(base, mod.seal, trusted)
        entry = Installed(name=mod.name, kind="user", file="", sha256=sha, signer=mod.seal.signer,
                          targets=[{"name": t.name, "build_id": t.build_id} for t in mod.targets])
    elif base.endswith(SUFFIXES["kernel"]):
        if trusted is not None:
            raise InputError(f"{base}: --trusted-keys applies to user-space modules; the kernel checks a "
                             "kernel module's signature itself")
        info = _modinfo(base, data)
        release = info.get("vermagic", "").split(" ")[0]
        if not release:
            raise InputError(f"{base}: no vermagic in .modinfo: the kernel release it is for is unknown")
        if not RELEASE.fullmatch(release):
            raise InputError(f"{base}: vermagic names an unusable kernel release {release!r}")
        entry = Installed(name=info.get("name") or base[:-len(SUFFIXES["kernel"])], kind="kernel", file="",
                          sha256=sha, kernel_release=release,
                          signer="module signature" if data.endswith(KERNEL_SIGNATURE) else "")
    else:
        raise InputError(f"{base}: not a patch module (NAME.kpatch or NAME.ko expected)")
    if not NAME.fullmatch(entry.name):
        raise InputError(f"{base}: module name {entry.name!r} is not usable as a file name")
    return entry


def _entry(index: Path, raw) -> Installed:
    """An index entry, checked: the index decides which file the store reads and how it is keyed."""
    try:
        entry = Installed(**raw)
        ok = (NAME.fullmatch(entry.name) and entry.kind in SUFFIXES and SHA256.fullmatch(entry.sha256)
              and entry.file == f"{MODULES}/{entry.name}-{entry.sha256[:16]}{SUFFIXES[entry.kind]}"
              and isinstance(entry.kernel_release, str) and isinstance(entry.signer, str)
              and (entry.kind == "user" or RELEASE.fullmatch(entry.kernel_release))
              and isinstance(entry.targets, list)
              and all(isinstance(t, dict) and set(t) == {"name", "build_id"} for t in entry.targets))
    except TypeError:
        ok = False
    if not ok:
        raise InputError(f"{index}: malformed store index entry: {json.dumps(raw, sort_keys=True)[:200]}")
    return entry


def kernel_manifest(entries: list[Installed], release: str) -> bytes:
    """The manifest of `release`'s kernel patches: a comment line, then `SHA256 FILE NAME` per patch in
    the order the boot loader loads them (by name), FILE relative to the store root. One space between
    fields: none of them can hold one (SHA256, NAME, RELEASE patterns above)."""
    lines = [f"# patch-build: the kernel patches installed for {release}, in load order: SHA256 FILE NAME\n"]
    lines += [f"{e.sha256} {e.file} {e.name}\n" for e in sorted(entries, key=lambda e: e.name)
              if e.kind == "kernel" and e.kernel_release == release]
    return "".join(lines).encode()


class Store:
    """The store at `root` (see `store_root`). Reading needs no lock; install and uninstall hold ROOT/.lock."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = store_root(root)
        self.index = self.root / INDEX

    # -- safety ---------------------------------------------------------------------------------------

    def _check_safe(self, path: Path) -> None:
        """Refuse a store directory or file someone else could have written: it decides what gets patched."""
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            raise Refused([(str(path), "is a symbolic link; the store must be a real directory")])
        if st.st_uid not in (0, os.geteuid()):
            raise Refused([(str(path), f"owned by uid {st.st_uid}, not by root or this user")])
        if st.st_mode & 0o022:
            raise Refused([(str(path), f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                                       "chmod go-w it")])

    def _exists(self) -> bool:
        if not os.path.lexists(self.root):
            return False
        self._check_safe(self.root)
        if not self.root.is_dir():
            raise InputError(f"store {self.root}: not a directory")
        return True

    def _create(self) -> None:
        if not self._exists():
            os.makedirs(self.root, mode=0o700)
            os.chmod(self.root, 0o700)  # whatever the umask
        for sub in (MODULES, KERNEL):
            path = self.root / sub
            if not os.path.lexists(path):
                os.mkdir(path, 0o700)
            self._check_safe(path)

    @contextlib.contextmanager
    def _locked(self):
        with _store_errors(self.root):
            self._create()
            fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    # -- index ----------------------------------------------------------------------------------------

    def entries(self) -> list[Installed]:
        """Every installed patch, by name. An absent store holds none."""
        with _store_errors(self.root):
            if not self._exists() or not os.path.lexists(self.index):
                return []
            self._check_safe(self.index)
        data = read_input(self.index, "store index", MAX_INDEX_BYTES)
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise InputError(f"{self.index}: not JSON ({e})") from None
        if (not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT or doc.get("version") != INDEX_VERSION
                or not isinstance(doc.get("patches"), list)):
            raise InputError(f"{self.index}: not a version {INDEX_VERSION} patch-build store index")
        entries = [_entry(self.index, raw) for raw in doc["patches"]]
        names = [e.name for e in entries]
        if len(set(names)) != len(names):
            raise InputError(f"{self.index}: malformed store index: a name recorded twice")
        return entries

    def _write_index(self, entries: list[Installed]) -> None:
        """Replace the index atomically; same entries, same bytes."""
        doc = {"format": INDEX_FORMAT, "version": INDEX_VERSION,
               "patches": [asdict(e) for e in sorted(entries, key=lambda e: e.name)]}
        _write_file(self.index, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())

    def _write_manifests(self, entries: list[Installed]) -> None:
        """Rewrite the manifest of every release with a kernel patch; remove those of releases without."""
        releases = {e.kernel_release for e in entries if e.kind == "kernel"}
        for release in sorted(releases):
            _write_file(self.root / KERNEL / release, kernel_manifest(entries, release))
        for path in sorted((self.root / KERNEL).iterdir()):
            if path.name not in releases:
                path.unlink()

    def _drop_unreferenced(self, entries: list[Installed]) -> None:
        """Remove module files no entry names: replaced ones, or those a crash left before the index."""
        wanted = {e.file for e in entries}
        for path in sorted((self.root / MODULES).iterdir()):
            if f"{MODULES}/{path.name}" not in wanted:
                path.unlink()

    # -- commands -------------------------------------------------------------------------------------

    def install(self, path: str | os.PathLike, force: bool = False, trusted=None) -> tuple[Installed, bool]:
        """Copy module `path` into the store, verified; (its entry, False when it was installed already with
        these contents). Refused when another module of its name is installed, unless `force`."""
        data = read_module_bytes(path)
        entry = describe(path, data, trusted)
        entry.file = f"{MODULES}/{entry.name}-{entry.sha256[:16]}{SUFFIXES[entry.kind]}"
        with self._locked():
            entries = self.entries()
            old = next((e for e in entries if e.name == entry.name), None)
            if old is not None and old.sha256 == entry.sha256:
                with contextlib.suppress(InputError):  # a damaged store copy is repaired below
                    self.verify(old)
                    self._write_manifests(entries)  # a manifest lost or damaged is repaired too
                    return old, False
            if old is not None and old.sha256 != entry.sha256 and not force:
                raise Refused([(entry.name, f"installed already with other contents (sha256:{old.sha256[:16]}..., "
                                            f"{old.kind}); --force replaces it")])
            # The new file first, then the index and the manifests that name it, then the old file:
            # whenever the process stops, the index and the manifests name files that hold what they record.
            _write_file(self.root / entry.file, data)
            entries = [e for e in entries if e.name != entry.name] + [entry]
            self._write_index(entries)
            self._write_manifests(entries)
            self._drop_unreferenced(entries)
        return entry, True

    def uninstall(self, name: str) -> Installed:
        with _store_errors(self.root):
            if not self._exists():  # not created just to say so
                raise InputError(f"{name}: not installed in {self.root} (no store there)")
        with self._locked():
            entries = self.entries()
            old = next((e for e in entries if e.name == name), None)
            if old is None:
                raise InputError(f"{name}: not installed in {self.root}")
            entries.remove(old)
            self._write_index(entries)
            self._write_manifests(entries)
            self._drop_unreferenced(entries)
        return old

    def for_build_id(self, build_id: str) -> list[Installed]:
        """The user-space patches with a target of this build-id (lowercase hex), by name."""
        return [e for e in self.entries() if e.kind == "user" and any(t["build_id"] == build_id for t in e.targets)]

    def for_kernel(self, release: str) -> list[Installed]:
        """The kernel patches for this kernel release (`uname -r`), by name."""
        return [e for e in self.entries() if e.kind == "kernel" and e.kernel_release == release]

    def verify(self, entry: Installed) -> Path:
        """The path of `entry`'s module once its file is checked: the SHA-256 the index records and, for a
        user-space module, its own digest and signature; for a kernel module, its release's manifest too.
        InputError naming what is wrong."""
        path = self.root / entry.file
        if os.path.lexists(path):
            self._check_safe(path)
        data = read_module_bytes(path)
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            raise InputError(f"{path}: modified since it was installed (the store records sha256:{entry.sha256})")
        if describe(path, data).name != entry.name:  # user space: examines the seal too
            raise InputError(f"{path}: holds another module than {entry.name}")
        if entry.kind == "kernel":
            self._check_manifest(entry.kernel_release)
        return path

    def _check_manifest(self, release: str) -> None:
        """The boot loader reads the manifest, not the index: it must say what the index says."""
        manifest = self.root / KERNEL / release
        if os.path.lexists(manifest):
            self._check_safe(manifest)
        data = read_input(manifest, "kernel patch manifest", MAX_INDEX_BYTES)
        if data != kernel_manifest(self.entries(), release):
            raise InputError(f"{manifest}: does not list the kernel patches of {release} the index records "
                             "(installing one of them again rewrites it)")


@contextlib.contextmanager
def _store_errors(root: Path):
    """A file system failure in the store (permission, full disk) as one line naming the store."""
    try:
        yield
    except OSError as e:
        raise InputError(f"store {root}: {e.filename or ''}: {e.strerror}") from None


def _write_file(path: Path, data: bytes) -> None:
    """Write `path` (mode 0600) atomically: a temporary file in its directory, fsynced, renamed over it."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)
