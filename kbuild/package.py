"""`patch-build --package deb`: a built module and its reports as a Debian package (issue 15).

The package `patch-build-NAME` carries the module in /usr/lib/patch-build/packages/NAME/ and the reports in
/usr/share/doc/patch-build-NAME/; its postinst runs `patch-ctl install` and enables the package's systemd
service, its prerm disables it and runs `patch-ctl uninstall`. A user-space patch's service is `patch-ctl
daemon --only NAME` (started at once); a kernel patch's is a boot step that runs the boot loader of kernel
patches (loader.boot, a copy shipped beside the module), which the postinst also runs for this patch when
the running kernel is the one it was built for. Built with `dpkg-deb`; same module, reports, version and
SOURCE_DATE_EPOCH, same bytes. Layout and scripts: docs/design.md.
"""
from __future__ import annotations

import email.utils
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import textwrap
from pathlib import Path

from patch_build.common.errors import InputError
from patch_build.kbuild.options import BuildResult
from patch_build.loader.boot import LOADER, loader_script
from patch_build.loader.store import describe
from patch_build.patchformat.integrity import read_module_bytes

ARCH = "amd64"  # the modules are x86-64 code
MODULE_DIR = "usr/lib/patch-build/packages"
UNIT_DIR = "lib/systemd/system"  # Debian 12's place for a package's units
# Debian policy 5.6.7 and 5.6.12: package names and versions.
PACKAGE_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")
VERSION = re.compile(r"(?:[0-9]+:)?[0-9][A-Za-z0-9.+~]*(?:-[A-Za-z0-9.+~]+)?")

POSTINST = """\
#!/bin/sh
# Installs the live patch {name} into patch-build's store, where patch-ctl and its daemon find it.
set -e
MODULE="$DPKG_ROOT/{module}"
STORE="${{PATCH_BUILD_STORE:-$DPKG_ROOT/var/lib/patch-build}}"
case "$1" in
configure)
    if ! command -v patch-ctl >/dev/null 2>&1; then
        echo "{package}: patch-ctl is not on PATH: install patch-build, then run dpkg --configure -a" >&2
        exit 1
    fi
    # --force: a new version of this package replaces the module its previous version installed.
    patch-ctl install --force --store "$STORE" "$MODULE"
{enable}{load}    ;;
esac
exit 0
"""

# Loading is best effort: the module stays installed whatever happens, and a failure is logged, not fatal.
KERNEL_LOAD = """\
    if [ -z "$DPKG_ROOT" ] && [ "$(uname -r)" = "{release}" ]; then
        if ! /{loader} --store "$STORE" --only {name}; then
            message="{package}: warning: loading {name} into the running kernel failed; it stays installed"
            echo "$message" >&2
            logger -t {package} "$message" 2>/dev/null || true
        fi
    fi
"""

# Kernel: the package's boot step loads every installed kernel patch of the booted release, as kpatch.service
# does kpatch's: early (before the network and the services), once, with a kernel command line to skip it.
KERNEL_UNIT = """\
[Unit]
Description=Kernel live patches installed by patch-build, loaded at boot ({name} among them)
Documentation=file:///usr/share/doc/{package}/{name}.report.html
DefaultDependencies=no
RequiresMountsFor=/var/lib/patch-build
Before=network-pre.target shutdown.target
Wants=network-pre.target
Conflicts=shutdown.target
ConditionKernelCommandLine=!patch-build.kernel=0

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh /{loader}

[Install]
WantedBy=multi-user.target
"""

# User space: the package's own service keeps the patch applied (`patch-ctl daemon --only NAME`): one unit per
# patch, so that the units of several patch packages never collide, each with its own lines in the journal.
UNIT = """\
[Unit]
Description=Live patch {name}, applied to every process it targets, running or starting
Documentation=file:///usr/share/doc/{package}/{name}.report.html
After=local-fs.target

[Service]
Type=simple
ExecStart=/usr/bin/env patch-ctl daemon --only {name}
Restart=on-failure

[Install]
WantedBy=multi-user.target
"""

# In an image being built (dpkg --root) the service is enabled there, for its first boot.
SERVICE_ENABLE = """\
    if [ -n "$DPKG_ROOT" ]; then
        systemctl --root="$DPKG_ROOT" enable {package}.service >/dev/null 2>&1 \\
            || echo "{package}: warning: {package}.service could not be enabled in $DPKG_ROOT" >&2
    elif [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
        systemctl enable {now}{package}.service || echo "{package}: warning: {package}.service could not be enabled" >&2
    fi
"""

SERVICE_DISABLE = """\
    if [ -n "$DPKG_ROOT" ]; then
        systemctl --root="$DPKG_ROOT" disable {package}.service >/dev/null 2>&1 || true
    elif [ -d /run/systemd/system ]; then
        systemctl disable {now}{package}.service || true
    fi
"""


PRERM = """\
#!/bin/sh
# Removes the live patch {name} from patch-build's store. A patch applied in the kernel or in processes
# stays applied: reverting it is the operator's decision.
set -e
STORE="${{PATCH_BUILD_STORE:-$DPKG_ROOT/var/lib/patch-build}}"
case "$1" in
remove|deconfigure)
{stop}    if command -v patch-ctl >/dev/null 2>&1; then
        patch-ctl uninstall --store "$STORE" {name} || echo "{package}: warning: patch-ctl uninstall {name} failed" >&2
    fi
    ;;
esac
exit 0
"""


def package_name(module_name: str) -> str:
    name = "patch-build-" + module_name.lower().replace("_", "-")
    if not PACKAGE_NAME.fullmatch(name):
        raise InputError(f"module name {module_name!r} does not make a Debian package name ({name!r})")
    return name


def check_version(version: str) -> str:
    if not VERSION.fullmatch(version):
        raise InputError(f"--package-version {version!r}: not a Debian version (digits first, then "
                         "letters, digits, . + ~, an optional -revision)")
    return version


def require_dpkg_deb() -> None:
    if shutil.which("dpkg-deb") is None:
        raise InputError("--package deb needs dpkg-deb (Debian's dpkg package)")


def maintainer() -> str:
    """`DEBFULLNAME <DEBEMAIL>`, as Debian's own tools take it: a package names who answers for it."""
    address = os.environ.get("DEBEMAIL", "").strip()
    if not re.fullmatch(r"[^<>@\s]+@[^<>@\s]+\.[^<>@\s]+", address):
        raise InputError("--package deb: set DEBEMAIL (and DEBFULLNAME) to the package maintainer's address"
                         + (f" (DEBEMAIL={address!r} is not one)" if address else ""))
    return f"{os.environ.get('DEBFULLNAME', '').strip() or address.split('@')[0]} <{address}>"


def package_epoch(patches: list[Path]) -> int:
    """The time the package's files and changelog carry: SOURCE_DATE_EPOCH, else the newest patch's mtime
    (the fix the package is made of; never the time of the build)."""
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None:
        return max((int(p.stat().st_mtime) for p in patches), default=0)
    if not value.isdigit():
        raise InputError(f"SOURCE_DATE_EPOCH={value!r}: not a number of seconds")
    return int(value)


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)  # whatever the umask: the archive records modes


def build_deb(result: BuildResult, outdir: Path, epoch: int, version: str | None = None) -> Path:
    """Package `result`'s module and reports into OUTDIR/PACKAGE_VERSION_amd64.deb (files and changelog
    dated `epoch`); its path."""
    data = read_module_bytes(result.module)
    entry = describe(result.module, data)
    sha = hashlib.sha256(data).hexdigest()
    version = check_version(version or f"0+{sha[:12]}")  # deterministic; --package-version orders upgrades
    package = package_name(entry.name)
    contact = maintainer()
    module = f"{MODULE_DIR}/{entry.name}/{Path(result.module).name}"
    reports = [p for p in [result.report_json, *result.extra_reports] if p and Path(p).is_file()]
    if entry.kind == "kernel":
        on = f"the Linux kernel {entry.kernel_release}"
    else:
        on = ", ".join(f"{t['name']} (build-id {t['build_id']})" for t in entry.targets)
    with tempfile.TemporaryDirectory(prefix="patch-build-deb-") as scratch:
        root = Path(scratch) / package
        docs = root / "usr/share/doc" / package
        _write(root / module, data)
        for report in reports:
            _write(docs / Path(report).name, Path(report).read_bytes())
        _write(docs / "copyright", (
            "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
            f"Comment: the live patch {entry.name}, built by patch-build from a fix of the patched program;\n"
            " that program's copyright and license apply to it.\n\n"
            "Files: *\nCopyright: the authors of the patched program\nLicense: other\n"
            " The license of the patched program.\n").encode())
        item = textwrap.fill(f"Live patch {entry.name} for {on}.", width=79, initial_indent="  * ",
                             subsequent_indent="    ", break_long_words=False)
        changelog = (f"{package} ({version}) unstable; urgency=medium\n\n{item}\n\n"
                     f" -- {contact}  {email.utils.formatdate(epoch)}\n")
        # A version with a Debian revision is that of a non-native package: its changelog has another name.
        _write(docs / ("changelog.Debian.gz" if "-" in version else "changelog.gz"),
               gzip.compress(changelog.encode(), 9, mtime=epoch))
        unit = UNIT if entry.kind == "user" else KERNEL_UNIT
        loader = f"{MODULE_DIR}/{entry.name}/{LOADER}"
        _write(root / UNIT_DIR / f"{package}.service", unit.format(name=entry.name, package=package,
                                                                   loader=loader).encode())
        if entry.kind == "kernel":
            _write(root / loader, loader_script(), 0o755)
        # The loader links the module by its symbol table: stripping it would break it.
        _write(root / "usr/share/lintian/overrides" / package,
               f"{package}: unstripped-binary-or-object [{module}]\n".encode())
        files = sorted(p for p in root.rglob("*") if p.is_file())
        installed_kib = sum((p.stat().st_size + 1023) // 1024 for p in files)
        control = root / "DEBIAN"
        _write(control / "md5sums", "".join(f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.relative_to(root)}\n"
                                            for p in files).encode())
        description = f"Description: live patch {entry.name}\n" + textwrap.fill(
            f"The live patch {entry.name} for {on}, built by patch-build, with its build reports. Installing the "
            "package puts the patch into patch-build's store (patch-ctl install); removing it takes it out again.",
            width=79, initial_indent=" ", subsequent_indent=" ", break_long_words=False) + "\n"
        _write(control / "control", (
            f"Package: {package}\nVersion: {version}\nArchitecture: {ARCH}\nMaintainer: {contact}\n"
            f"Installed-Size: {installed_kib}\nSection: admin\nPriority: optional\n{description}").encode())
        now = "--now " if entry.kind == "user" else ""  # a kernel patch is loaded below, not by its boot step
        load = KERNEL_LOAD.format(release=entry.kernel_release, name=entry.name, package=package, loader=loader) \
            if entry.kind == "kernel" else ""
        _write(control / "postinst", POSTINST.format(name=entry.name, module=module, package=package, load=load,
                                                     enable=SERVICE_ENABLE.format(package=package, now=now)).encode(),
               0o755)
        _write(control / "prerm", PRERM.format(name=entry.name, package=package,
                                               stop=SERVICE_DISABLE.format(package=package, now=now)).encode(), 0o755)
        for d in [root, *(p for p in root.rglob("*") if p.is_dir())]:
            os.chmod(d, 0o755)
        outdir.mkdir(parents=True, exist_ok=True)
        deb = outdir / f"{package}_{version.split(':')[-1]}_{ARCH}.deb"
        env = dict(os.environ, SOURCE_DATE_EPOCH=str(epoch))
        proc = subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(root), str(deb)],
                              capture_output=True, text=True, env=env)
        if proc.returncode:
            raise InputError(f"dpkg-deb --build {package}: {proc.stderr.strip() or proc.stdout.strip()}")
    return deb
