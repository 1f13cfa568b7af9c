"""Link a kernel livepatch module: the differ's outputs + the generated hook, built by kbuild against headers.

`ld -r` joins the outputs into one prebuilt object (its `.klp.sym.*` references made weak for modpost);
templates/kernel gives the hook and the Kbuild file; `make -C HEADERS M=DIR modules` compiles the hook
against the target kernel's headers (so vermagic and symbol CRCs match) and links NAME.ko with
linker/kernel.lds, which delimits `.kpatch.funcs`; `linker.kernel_klp` then turns the references to the
running kernel's unexported and local symbols into livepatch relocations.

objtool's tables (ORC unwind data, return and call sites, ...) are made for each object at its compile, or,
on a kernel with IBT or clang LTO (6.12), once for the whole module at its link, as kbuild does for any
module made of several objects. objtool makes none of a table an object already has ("file already has
.orc_unwind section, skipping"), so at such a link the differ's outputs must not bring the tables objtool made
for their units (module units compiled as a module of one object have them): objtool then makes them for
the included code and the hook alike.
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
from patch_build.common.kconfig import auto_conf
from patch_build.linker.kernel_klp import weaken_klp_symbols, write_klp_relocations

HOOK, DIFFS, LDS = "patch_hook", "patch_diffs", "kernel.lds"
# What objtool makes (tools/objtool: check.c's create_*_sections, orc_gen.c), with the relocations of each.
OBJTOOL_TABLES = (".orc_unwind", ".orc_unwind_ip", ".return_sites", ".call_sites", ".retpoline_sites",
                  ".static_call_sites", ".ibt_endbr_seal", ".cfi_sites")
OBJTOOL_MCOUNT = "__mcount_loc"  # objtool's with CONFIG_FTRACE_MCOUNT_USE_OBJTOOL, else the compiler's
OBJTOOL_PREFIX_SYMBOLS = "__pfx_*"  # CONFIG_PREFIX_SYMBOLS: objtool names each function's padding


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


def objtool_at_module_link(config: dict[str, str]) -> bool:
    """kbuild runs objtool on a module's linked object, not on each of its objects (scripts/Makefile.lib's
    delay-objtool)."""
    return config.get("CONFIG_OBJTOOL") == "y" and "y" in (config.get("CONFIG_X86_KERNEL_IBT"),
                                                           config.get("CONFIG_LTO_CLANG"))


def _remove_objtool_tables(obj: Path, config: dict[str, str]) -> None:
    mcount = [OBJTOOL_MCOUNT] if config.get("CONFIG_FTRACE_MCOUNT_USE_OBJTOOL") == "y" else []
    removals = [arg for table in (*OBJTOOL_TABLES, *mcount) for arg in ("-R", table)]
    proc = subprocess.run(["objcopy", *removals, "--wildcard", f"--strip-symbol={OBJTOOL_PREFIX_SYMBOLS}",
                           os.fspath(obj)], capture_output=True, text=True)
    if proc.returncode:
        raise InputError(f"removing objtool's tables from the diffed objects failed: "
                         f"{(proc.stderr.strip().splitlines() or ['objcopy failed'])[-1]}")


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
    config = auto_conf(headers)
    if objtool_at_module_link(config):
        _remove_objtool_tables(diffs, config)
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
