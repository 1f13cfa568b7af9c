"""Link a kernel livepatch module: the differ's outputs + the generated hook, built by kbuild against headers.

`ld -r` joins the outputs into one prebuilt object (its `.klp.sym.*` references made weak for modpost);
templates/kernel gives the hook and the Kbuild file; `make -C HEADERS M=DIR modules` compiles the hook
against the target kernel's headers (so vermagic and symbol CRCs match) and links NAME.ko with
linker/kernel.lds, which delimits `.kpatch.funcs`; `linker.kernel_klp` then turns the references to the
running kernel's unexported and local symbols into livepatch relocations.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import jinja2

from patch_build.common.buildcmd import run_build
from patch_build.common.errors import InputError
from patch_build.linker.kernel_klp import weaken_klp_symbols, write_klp_relocations

HOOK, DIFFS, LDS = "patch_hook", "patch_diffs", "kernel.lds"


def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("patch_build.templates", "kernel"), undefined=jinja2.StrictUndefined,
                              keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)


def render_module_source(name: str, replace: bool) -> dict[str, str]:
    """{file name: contents} of the module's source directory, besides the prebuilt diffs object."""
    env = _environment()
    return {
        f"{HOOK}.c": env.get_template("livepatch.c.j2").render(name=name, replace=replace),
        "Kbuild": env.get_template("Kbuild.j2").render(name=name, hook=HOOK, objects=[f"{DIFFS}.o"], lds=LDS),
        LDS: resources.files("patch_build.linker").joinpath(LDS).read_text(),
    }


def link_kernel_module(outputs: list[Path], name: str, headers: Path, workdir: Path, replace: bool,
                       jobs: int, env: dict[str, str]) -> tuple[Path, list[str]]:
    """Build workdir/module/NAME.ko; return it and the `.klp.rela.*` sections it got."""
    if name in (HOOK, DIFFS):
        raise InputError(f"module name {name} is reserved; choose another with -n")
    moddir = workdir / "module"
    shutil.rmtree(moddir, ignore_errors=True)
    moddir.mkdir(parents=True)
    diffs = moddir / f"{DIFFS}.o"
    proc = subprocess.run(["ld", "-r", "-o", os.fspath(diffs), *map(os.fspath, outputs)], capture_output=True,
                          text=True)
    if proc.returncode:
        raise InputError(f"joining the diffed objects failed: {proc.stderr.strip().splitlines()[-1]}")
    weaken_klp_symbols(diffs)
    # modpost reads each object's kbuild command file (for symbol CRCs); a prebuilt object exports nothing.
    (moddir / f".{DIFFS}.o.cmd").write_text(f"cmd_{DIFFS}.o := prebuilt by patch-build\n")
    for fname, text in render_module_source(name, replace).items():
        (moddir / fname).write_text(text)
    # The scratch directory's random name would reach the hook's DWARF: same inputs, same module bytes.
    env = dict(env, KCFLAGS=f"{env.get('KCFLAGS', '')} -ffile-prefix-map={moddir}=.".strip())
    # No BTF for the module (CONFIG_DEBUG_INFO_BTF_MODULES off for this link): the livepatch core does not use
    # it, and pahole's parallel encoding (Debian 12's pahole 1.24, kernels >= 6.2 where a vmlinux is at hand)
    # orders its types differently from run to run.
    run_build(f"make -C '{headers}' M='{moddir}' -j{jobs} CONFIG_DEBUG_INFO_BTF_MODULES= modules", moddir, env,
              workdir / "module-build.log", "building the livepatch module")
    module = moddir / f"{name}.ko"
    if not module.is_file():
        raise InputError(f"building the livepatch module did not produce {module.name}")
    return module, write_klp_relocations(module)
