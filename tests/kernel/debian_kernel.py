"""Debian 12's two kernel lines for the tests (6.1, and 6.12 from bookworm-security): download, unpack and
prepare once, cached outside the checkout in $PATCH_BUILD_CACHE (default
${XDG_CACHE_HOME:-~/.cache}/patch-build)/kernel, so fresh clones and CI reuse it.

`kernel_env(line)` makes sure that, for the release the line's meta package currently depends on:
- the headers packages (linux-headers-RELEASE, its -common and linux-kbuild dependencies: what patch modules
  are built against) are unpacked in CACHE/headers-RELEASE; not installed, since 6.12's headers depend on
  its image package, which would install a kernel (and build an initramfs) on the test machine;
- the image package is unpacked (vmlinuz, System.map, config, the modules) in CACHE/image-RELEASE;
- the source package of the same version is unpacked and prepared (`make olddefconfig prepare` with the
  image's config) in CACHE/linux-source-VERSION;
- on demand (`debug_vmlinux`), the vmlinux of linux-image-RELEASE-dbg, with its full symbol table, as
  CACHE/vmlinux-RELEASE: the ~860 MB package is downloaded once and only the vmlinux is kept.
Everything is idempotent: a stamp file records each finished step, so later runs cost nothing; the
release chosen first is kept (CACHE/release-LINE.json) so that a new Debian kernel upload does not
invalidate the cache mid-way. Delete CACHE to move to the current one.
"""
from __future__ import annotations

import fcntl
import json
import lzma
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from support.debian import CACHE_ROOT
from support.debian import apt_env as _apt_env
from support.debian import run as _run

CACHE = CACHE_ROOT / "kernel"
KALLSYMS_MODULES = ("binfmt_misc", "ttyprintk")  # the modules whose functions the tests patch


@dataclass(frozen=True)
class KernelLine:
    name: str  # 6.1, 6.12
    meta: str  # the meta package that depends on the line's current image package
    release: str  # pattern of its release names
    image: str  # the image package, {release} filled in


LINES = {line.name: line for line in [
    KernelLine("6.1", "linux-image-amd64", r"6\.1\.0-\d+-amd64", "linux-image-{release}"),
    KernelLine("6.12", "linux-image-6.12-amd64", r"6\.12\.\d+\+deb12-amd64", "linux-image-{release}-unsigned"),
]}


@dataclass(frozen=True)
class KernelEnv:
    line: str  # 6.1, 6.12
    release: str  # 6.1.0-N-amd64, 6.12.N+deb12-amd64
    version: str  # Debian package version, 6.1.X-Y
    image: Path  # unpacked linux-image package
    source: Path  # prepared source tree
    headers: Path  # unpacked linux-headers package: its usr/src/linux-headers-RELEASE

    @property
    def vmlinuz(self) -> Path:
        return self.image / "boot" / f"vmlinuz-{self.release}"

    @property
    def system_map(self) -> Path:
        return self.image / "boot" / f"System.map-{self.release}"

    @property
    def config(self) -> Path:
        return self.image / "boot" / f"config-{self.release}"

    @property
    def modules(self) -> Path:
        return self.image / "lib" / "modules" / self.release

    @property
    def kallsyms(self) -> Path:
        """/proc/kallsyms of the booted image with KALLSYMS_MODULES loaded: Debian's System.map is a stub."""
        return CACHE / f"symbols-with-{'-'.join(KALLSYMS_MODULES)}" / f"kallsyms-{self.release}"

    @property
    def debug_vmlinux(self) -> Path:
        """The vmlinux of linux-image-RELEASE-dbg (fetched by `debug_vmlinux`): what a CI job without the
        target kernel gives `patch-build -v`."""
        return CACHE / f"vmlinux-{self.release}"

    def module(self, name: str) -> Path:
        """The module NAME.ko, decompressed next to the image's NAME.ko.xz (6.12's) on first use."""
        found = sorted(self.modules.rglob(f"{name}.ko")) or sorted(self.modules.rglob(f"{name}.ko.xz"))
        if not found:
            raise FileNotFoundError(f"module {name} not in {self.modules}")
        if found[0].suffix == ".xz":
            ko = found[0].with_suffix("")
            if not ko.exists():
                tmp = ko.with_name(ko.name + ".tmp")
                tmp.write_bytes(lzma.decompress(found[0].read_bytes()))
                tmp.rename(ko)
            return ko
        return found[0]


def _release(line: KernelLine) -> str:
    deps = _run("apt-cache", "depends", line.meta)
    m = re.search(rf"linux-image-({line.release})$", deps, re.M)
    if m is None:
        raise RuntimeError(f"cannot find the {line.name} kernel {line.meta} depends on")
    return m.group(1)


def _package_version(package: str) -> str:
    show = _run("apt-cache", "show", package)
    return re.search(r"^Version: (\S+)", show, re.M).group(1)


def _download(package: str, dest: Path) -> Path:
    """apt-get download into dest (cached), returning the .deb."""
    name, _, version = package.partition("=")
    found = sorted(dest.glob(f"{name}_{version or ''}*.deb"))
    if found:
        return found[-1]
    dest.mkdir(parents=True, exist_ok=True)
    try:
        _run("apt-get", "download", package, cwd=dest)
    except RuntimeError:
        _run("apt-get", "update", "-qq", env=_apt_env())
        _run("apt-get", "download", package, cwd=dest)
    return sorted(dest.glob(f"{name}_*.deb"))[-1]


def _prepare_source(deb: Path, tree: Path, config: Path) -> None:
    tmp = tree.with_name(tree.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # linux-source ships the tree as a tarball inside the package.
    subprocess.run(f"dpkg-deb --fsys-tarfile '{deb}' | tar -xO --wildcards './usr/src/linux-source-*.tar.xz' "
                   f"| xz -dc -T0 | tar -x --strip-components=1 -C '{tmp}'", shell=True, check=True)
    shutil.copy(config, tmp / ".config")
    # Debian's signing keys are not part of the source package.
    _run("./scripts/config", "--set-str", "SYSTEM_TRUSTED_KEYS", "", "--set-str", "SYSTEM_REVOCATION_KEYS", "",
         cwd=tmp)
    _run("make", "-s", f"-j{os.cpu_count() or 2}", "olddefconfig", "prepare", cwd=tmp)
    shutil.rmtree(tree, ignore_errors=True)
    tmp.rename(tree)


def _unpack_headers(release: str, version: str, debs: Path, root: Path) -> None:
    """linux-headers-RELEASE and the header and kbuild packages it depends on, unpacked into root. Its
    Makefile includes the -common one by absolute path (/usr/src/...): pointed into root instead."""
    package = f"linux-headers-{release}"
    depends = re.search(r"^Depends: (.*)$", _run("apt-cache", "show", f"{package}={version}"), re.M).group(1)
    deps = re.findall(r"\b(linux-(?:headers|kbuild)-[^\s,]+)", depends)
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for name in [package, *deps]:
        _run("dpkg-deb", "-x", str(_download(f"{name}={version}", debs)), str(tmp))
    makefile = tmp / "usr" / "src" / package / "Makefile"
    makefile.write_text(makefile.read_text().replace(" /usr/src/", f" {root}/usr/src/"))
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)


def _pick_release(line: KernelLine) -> tuple[str, str]:
    """The release and package version to use: the cached choice, else the current one (after apt-get update,
    so a stale package list does not name a kernel the mirror no longer has)."""
    record = CACHE / f"release-{line.name}.json"
    if record.exists():
        data = json.loads(record.read_text())
        return data["release"], data["version"]
    _run("apt-get", "update", "-qq", env=_apt_env())
    release = _release(line)
    version = _package_version(line.image.format(release=release))
    record.write_text(json.dumps({"release": release, "version": version}) + "\n")
    return release, version


def kernel_env(name: str) -> KernelEnv:
    line = LINES[name]
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        release, version = _pick_release(line)
        debs = CACHE / "debs"
        headers = CACHE / f"headers-{release}"
        if not (headers / ".done").exists():
            _unpack_headers(release, version, debs, headers)
            (headers / ".done").touch()
        image = CACHE / f"image-{release}"
        if not (image / ".done").exists():
            deb = _download(f"{line.image.format(release=release)}={version}", debs)
            shutil.rmtree(image, ignore_errors=True)
            _run("dpkg-deb", "-x", str(deb), str(image))
            (image / ".done").touch()
        source = CACHE / f"linux-source-{version}"
        if not (source / ".prepared").exists():
            deb = _download(f"linux-source-{line.name}={version}", debs)
            _prepare_source(deb, source, image / "boot" / f"config-{release}")
            (source / ".prepared").touch()
        env = KernelEnv(line.name, release, version, image, source,
                        headers / "usr" / "src" / f"linux-headers-{release}")
        if not env.kallsyms.exists():
            _dump_kallsyms(env)
        return env


def debug_vmlinux(env: KernelEnv) -> Path:
    """env.debug_vmlinux, downloaded and extracted the first time: the package goes once the vmlinux is out."""
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if env.debug_vmlinux.exists():
            return env.debug_vmlinux
        staging = CACHE / "debug-download.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            deb = _download(f"linux-image-{env.release}-dbg={env.version}", staging)
            tmp = env.debug_vmlinux.with_name(env.debug_vmlinux.name + ".tmp")
            member = f"./usr/lib/debug/boot/vmlinux-{env.release}"
            # tar stops at the first match (the file is near the start): not decompressing the other 4 GB of
            # debug modules saves minutes; dpkg-deb then dies of the closed pipe, which is expected.
            with open(tmp, "wb") as out:
                unpack = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", os.fspath(deb)], stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL)
                tar = subprocess.run(["tar", "-xO", "--occurrence=1", member], stdin=unpack.stdout, stdout=out,
                                     stderr=subprocess.PIPE, text=True)
                unpack.stdout.close()
                unpack.wait()
            if tar.returncode or tmp.stat().st_size == 0:
                raise RuntimeError(f"no {member} in {deb.name}: {tar.stderr.strip()}")
            tmp.rename(env.debug_vmlinux)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return env.debug_vmlinux


def _dump_kallsyms(env: KernelEnv) -> None:
    """Boot the image, load the modules the tests patch, print /proc/kallsyms (gzip + base64: the serial
    console is slow)."""
    import base64
    import gzip

    from qemu_vm import run_vm

    script = "".join(f"insmod /lib/modules/{m}.ko\n" for m in KALLSYMS_MODULES)
    script += "echo KALLSYMS-BEGIN\ngzip -c /proc/kallsyms | base64\necho KALLSYMS-END\n"
    out = run_vm(env.vmlinuz, script, {f"/lib/modules/{m}.ko": env.module(m) for m in KALLSYMS_MODULES})
    encoded = out.split("KALLSYMS-BEGIN\n", 1)[1].split("KALLSYMS-END", 1)[0]
    text = gzip.decompress(base64.b64decode("".join(encoded.split()))).decode()
    lines = [l for l in text.splitlines() if re.match(r"^[0-9a-f]{16} \S \S", l)]
    if len(lines) < 50000:
        raise RuntimeError(f"/proc/kallsyms of the VM has only {len(lines)} symbols")
    env.kallsyms.parent.mkdir(exist_ok=True)
    tmp = env.kallsyms.with_name(env.kallsyms.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.rename(env.kallsyms)


if __name__ == "__main__":
    import sys

    for name in sys.argv[1:] or LINES:
        print(kernel_env(name))
