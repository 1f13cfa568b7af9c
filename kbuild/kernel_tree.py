"""The Linux source tree a livepatch is built in: its config, preparing it once (`make olddefconfig prepare`
without what only a vmlinux link needs, kept for later runs), and compiling objects in it with our flags.
"""
from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

from patch_build.common.buildcmd import BuildFailed, build_environment, run_build
from patch_build.common.errors import InputError

# kpatch's patch macros (kpatch-macros.h, kpatch-syscall.h), found as kpatch-build's patches expect.
KPATCH_INCLUDE = Path(os.fspath(resources.files("patch_build.templates").joinpath("kernel", "include")))
KCFLAGS = f"-ffunction-sections -fdata-sections -I{shlex.quote(os.fspath(KPATCH_INCLUDE))}"  # kbuild runs it by sh
# Targets of `make prepare` that neither compiling a unit nor linking the module (against the headers) needs,
# kept out with make's -o: the BTF tool of a vmlinux link (libbpf: 40% of prepare's CPU) and the vmlinux
# relocation tool. Once prepared, objtool is not re-checked either (a second of make per build).
NOT_PREPARED = ("tools/bpf/resolve_btfids", "archscripts")
NOT_REBUILT = (*NOT_PREPARED, "tools/objtool")


def _assume_old(targets: tuple[str, ...]) -> str:
    return " ".join(f"-o {t}" for t in targets)


class KernelTree:
    """KSRC, built with `jobs` parallel jobs; logs go to `scratch`. `headers` is the target kernel's build tree."""

    def __init__(self, ksrc: Path, headers: Path, jobs: int, scratch: Path):
        self.ksrc = ksrc
        self.headers = headers
        self.jobs = jobs
        self.scratch = scratch
        self.env = build_environment(dict(os.environ), jobs)
        # The tree's makes, prepare included: kbuild compiles bounds.s, asm-offsets.s and modpost's empty.o with
        # KCFLAGS too, and would redo them (and relink modpost) at the first unit build if they changed.
        self.make_env = dict(self.env, KCFLAGS=(self.env.get("KCFLAGS", "") + " " + KCFLAGS).strip())

    # ---- preparing -----------------------------------------------------------------------------------

    def config(self, given: Path | None, release: str) -> Path:
        """-c, else the tree's .config, else /boot's config of the target release."""
        if given is not None:
            return given
        if (self.ksrc / ".config").is_file():
            return self.ksrc / ".config"
        boot = Path("/boot") / f"config-{release}"
        if boot.is_file():
            return boot
        raise InputError(f"no kernel config: {self.ksrc}/.config and {boot} do not exist; give one with -c")

    def prepare(self, config: Path) -> None:
        """`make olddefconfig prepare` unless the tree is already prepared for this config. The config given
        (-c, or /boot's) is remembered by its hash, since olddefconfig rewrites .config."""
        dot = self.ksrc / ".config"
        autoconf = self.ksrc / "include" / "generated" / "autoconf.h"
        objtool = self.ksrc / "tools" / "objtool" / "objtool"
        stamp = self.ksrc / "include" / "config" / "patch-build.config.sha256"
        wanted = hashlib.sha256(config.read_bytes()).hexdigest()
        if config.resolve() != dot.resolve():
            if stamp.is_file() and stamp.read_text() == wanted and dot.is_file():
                pass  # prepared from this config before
            else:
                shutil.copy(config, dot)
        if autoconf.is_file() and objtool.is_file() and autoconf.stat().st_mtime >= dot.stat().st_mtime:
            return
        text = dot.read_text(errors="replace")
        # Distribution configs name signing keys that are not part of the source tree.
        for key in ("CONFIG_SYSTEM_TRUSTED_KEYS", "CONFIG_SYSTEM_REVOCATION_KEYS"):
            m = re.search(rf'^{key}="([^"]+)"$', text, re.M)
            if m and not (self.ksrc / m.group(1)).exists():
                text = text.replace(m.group(0), f'{key}=""')
        dot.write_text(text)
        skipped = NOT_REBUILT if self._objtool_from_headers(objtool) else NOT_PREPARED
        # Two makes: prepare's variables (CONFIG_OBJTOOL...) are read from what olddefconfig writes.
        run_build(f"make -j{self.jobs} olddefconfig && make -j{self.jobs} {_assume_old(skipped)} prepare",
                  self.ksrc, self.make_env, self.scratch / "prepare.log", "preparing the kernel tree (make prepare)")
        if config.resolve() != dot.resolve():
            stamp.write_text(wanted)

    def _objtool_from_headers(self, objtool: Path) -> bool:
        """Copy the headers' objtool (Debian's linux-kbuild) into a tree that has none, when both are of the same
        kernel version: it is built from the same sources, and building it is a third of prepare's CPU."""
        theirs = self.headers / "tools" / "objtool" / "objtool"
        if objtool.exists() or not os.access(theirs, os.X_OK):
            return objtool.exists()
        try:
            with open(self.ksrc / "Makefile", errors="replace") as f:
                head = f.read(4096)
            release = (self.headers / "include" / "config" / "kernel.release").read_text(errors="replace")
        except OSError:
            return False
        numbers = [re.search(rf"^{key} = (\d+)$", head, re.M) for key in ("VERSION", "PATCHLEVEL", "SUBLEVEL")]
        if not all(numbers) or not re.match(re.escape(".".join(m.group(1) for m in numbers)) + r"(?!\d)", release):
            return False
        objtool.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(theirs, objtool)
        return True

    # ---- compiling -----------------------------------------------------------------------------------

    def _cmd_file(self, obj: str) -> Path:
        return self.ksrc / os.path.dirname(obj) / f".{os.path.basename(obj)}.cmd"

    def recorded_line(self, obj: str) -> str:
        """The first line of kbuild's `.OBJ.cmd` for `obj` (its command line), '' when there is none."""
        cmd_file = self._cmd_file(obj)
        return cmd_file.read_text(errors="replace").split("\n", 1)[0] if cmd_file.is_file() else ""

    def compile(self, objs: dict[str, bool], what: str) -> set[str]:
        """Build the objects (relative to KSRC; the value: optional, i.e. found through an included file and
        maybe not part of this configuration). An object kbuild already compiled with our flags is compiled
        again by its recorded command (kbuild's `.o.cmd`): the same gcc + objtool line, without make's seconds
        of checking the whole tree. The others go through make. Returns the optional objects kbuild has no
        rule for (this configuration does not build them): those are not built."""
        direct = {obj: cmd for obj in objs if (cmd := self._recorded_command(obj)) is not None}
        self._run_recorded(direct, what)
        rest = {obj: optional for obj, optional in objs.items() if obj not in direct}
        return self._make(rest, what) if rest else set()

    def _recorded_command(self, obj: str) -> str | None:
        cmd_file = self._cmd_file(obj)
        auto_conf = self.ksrc / "include" / "config" / "auto.conf"
        try:
            if cmd_file.stat().st_mtime < auto_conf.stat().st_mtime:
                return None  # configured again since
            line = cmd_file.read_text(errors="replace").split("\n", 1)[0]
        except OSError:
            return None
        prefix = f"cmd_{obj} := "
        if not line.startswith(prefix) or f" {KCFLAGS} " not in line:
            return None
        return line[len(prefix):].replace("$$", "$").replace("\\#", "#")

    def _run_recorded(self, commands: dict[str, str], what: str) -> None:
        def run(item):
            obj, cmd = item
            (self.ksrc / obj).unlink(missing_ok=True)  # never diff a stale object
            # -e as kbuild runs it: the line is `gcc ...; objtool ...`, and a failed gcc must fail it.
            return obj, subprocess.run(["sh", "-ec", cmd], cwd=self.ksrc, env=self.env, capture_output=True,
                                       text=True)

        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            for obj, proc in pool.map(run, commands.items()):
                dep = self.ksrc / os.path.dirname(obj) / f".{os.path.basename(obj)}.d"
                dep.unlink(missing_ok=True)  # make's fixdep would have folded it into the .cmd file
                if proc.returncode:
                    lines = [l for l in (proc.stderr + proc.stdout).splitlines() if l.strip()]
                    first = next((l for l in lines if "error:" in l), lines[-1] if lines else "")
                    raise BuildFailed(f"{what} build of {obj} failed: {first}", lines[-15:],
                                      self.scratch / f"build-{what}.log")

    def _make(self, objs: dict[str, bool], what: str) -> set[str]:
        names = " ".join(objs)
        log = self.scratch / f"build-{what}.log"
        keep_going = "-k " if any(objs.values()) else ""
        try:
            run_build(f"make {keep_going}-j{self.jobs} {_assume_old(NOT_REBUILT)} {names}", self.ksrc, self.make_env,
                      log, f"{what} build of {names}")
        except BuildFailed:
            text = log.read_text(errors="replace")
            unknown = set(re.findall(r"No rule to make target '([^']+)'", text))
            if not keep_going or any(not optional and obj in unknown for obj, optional in objs.items()) \
                    or "error:" in text or not unknown:
                raise
            return unknown & set(objs)
        return set()
