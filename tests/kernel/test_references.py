"""What the patch module references, on real kernel units:

- fs/aio.c with dynamic-debug jump labels (aio-pr-debug): the special-section pass replaces relocations, and a
  cache of targets keyed by id() once gave the new ones stale targets (jump-label keys naming functions,
  varying with PYTHONHASHSEED). The output must be byte-identical under several seeds, each key naming data,
  and the module must load in qemu (a key in kernel text makes the loader write into code). Its two changed
  pr_debug() formats are new descriptors the module carries: listed under its name in dynamic_debug/control,
  and enabled there.
- a new function of fs/proc/version.c called from fs/proc/cmdline.c (cross-unit-function) resolves inside the
  module, not as a klp reference to the running kernel: built with the default name (livepatch_ prefix),
  loaded in qemu, /proc/cmdline shows its effect.
- a module name the kernel already has (built in or loadable) is refused before anything is built.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

from conftest import fixture_patch
from qemu_vm import LIVEPATCH_SHELL, check_results, run_vm, vm_results
from support.hashseeds import patch_diff_outputs

pytestmark = [pytest.mark.kernel]

KEY_FIELDS = {"__jump_table": ("jump_entry", 8), ".static_call_sites": ("static_call_site", 4)}  # (struct, key offset)


def _kallsyms_types(path: Path) -> dict[str, set[str]]:
    types: dict[str, set[str]] = {}
    with open(path) as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 3:
                types.setdefault(fields[2], set()).add(fields[1])
    return types


def _key_names(obj: bytes, tmp: Path, sizes: dict[str, int]) -> list[str]:
    """The symbol each jump-label and static-call key relocation names (`.klp.sym.OBJ.NAME,POS` -> NAME)."""
    path = tmp / "keys.o"
    path.write_bytes(obj)
    names = []
    with open(path, "rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        for sec in elf.iter_sections():
            if not isinstance(sec, RelocationSection) or sec.name.removeprefix(".rela") not in KEY_FIELDS:
                continue
            struct, key = KEY_FIELDS[sec.name.removeprefix(".rela")]
            size = sizes[struct]
            for r in sec.iter_relocations():
                if r["r_offset"] % size == key:
                    name = symtab.get_symbol(r["r_info_sym"]).name
                    m = re.fullmatch(r"\.klp\.sym\.[^.]+\.(.+),\d+", name)
                    names.append(m.group(1) if m else name)
    return names


@pytest.fixture(scope="module")
def built(patch_build, tmp_path_factory):
    """Both modules, built with their default names, and the aio unit's objects (kept with -d)."""
    out = tmp_path_factory.mktemp("references")
    aio = patch_build("aio-pr-debug.patch", out, "-d")
    assert aio.ok, aio.stderr
    scratch = Path(re.search(r"scratch tree kept: (\S+)", aio.stderr).group(1))
    objects = out / "orig.o", out / "patched.o"
    shutil.copy(next((scratch / "orig").glob("*aio.o")), objects[0])
    shutil.copy(next((scratch / "patched").glob("*aio.o")), objects[1])
    shutil.rmtree(scratch)
    cross = patch_build("cross-unit-function.patch", out)
    return {"aio": aio, "cross": cross, "aio objects": objects}


SCRIPT = LIVEPATCH_SHELL + r"""
insmod /livepatch_aio_pr_debug.ko; echo "R aio.insmod=$?"
echo "R aio.transition=$(wait_transition livepatch_aio_pr_debug)"
mount -t debugfs debugfs /sys/kernel/debug
control=/sys/kernel/debug/dynamic_debug/control
echo "R aio.descriptors=$(grep '(klp)' $control | grep -c '\[livepatch_aio_pr_debug\]')"
echo 'module livepatch_aio_pr_debug +p' > $control; echo "R aio.enable=$?"
echo "R aio.enabled=$(grep '(klp)' $control | grep -c '=p ')"
disable livepatch_aio_pr_debug aio

echo "R cross.before=$(cut -c1-15 /proc/cmdline)"
insmod /livepatch_cross_unit_function.ko; echo "R cross.insmod=$?"
echo "R cross.transition=$(wait_transition livepatch_cross_unit_function)"
echo "R cross.patched=$(cut -c1-15 /proc/cmdline)"
disable livepatch_cross_unit_function cross
echo "R cross.restored=$(cut -c1-15 /proc/cmdline)"
"""


@pytest.fixture(scope="module")
def vm(kenv, built) -> dict[str, str]:
    files = {f"/{b.module.name}": b.module for key, b in built.items() if key != "aio objects" and b.ok}
    console = run_vm(kenv.vmlinuz, SCRIPT, files)
    return vm_results(console)



def test_output_is_deterministic_and_keys_name_data(kenv, built, kernel_struct_sizes, tmp_path):
    sizes = [f"--struct-size={name}={size}" for name, size in sorted(kernel_struct_sizes.sizes.items())]
    outputs = patch_diff_outputs(*built["aio objects"], tmp_path, "--kernel", *sizes)
    assert len(set(outputs.values())) == 1, "the output depends on PYTHONHASHSEED"
    keys = _key_names(next(iter(outputs.values())), tmp_path, kernel_struct_sizes.sizes)
    assert len(keys) >= 10, keys  # pr_debug sites of the two changed functions, and their static calls
    types = _kallsyms_types(kenv.kallsyms)
    not_data = [k for k in keys if not types.get(k) or types[k] & set("tT")]
    assert not not_data, f"keys that are no data symbol of the running kernel: {not_data}"


def test_module_with_jump_labels_loads(built, vm):
    # A key naming a function made the loader write a static key's fields into kernel text.
    assert built["aio"].module.name == "livepatch_aio_pr_debug.ko"
    check_results(vm, {"aio.insmod": "0", "aio.transition": "0", "aio.disabled": "gone", "aio.rmmod": "0"})
    # The two changed pr_debug() formats are new descriptors the module carries: dynamic debug lists them under
    # the module's name, and enabling them flips jump labels whose keys lie in the module.
    check_results(vm, {"aio.descriptors": "2", "aio.enable": "0", "aio.enabled": "2"})
    assert not re.search(r"\b(BUG|WARNING|Oops)\b", vm["console"]), vm["console"][-4000:]


def test_new_function_called_from_another_unit(built, vm):
    cross = built["cross"]
    assert cross.ok, cross.stderr
    assert cross.module.name == "livepatch_cross_unit_function.ko"
    with open(cross.module, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        # (6.12's objtool adds __pfx_klp_cross_unit_tag, its CALL_PADDING, when kbuild links the module.)
        [tag] = [s for s in symtab.iter_symbols() if "klp_cross_unit_tag" in s.name and not s.name.startswith("__pfx_")]
        assert tag.name == "klp_cross_unit_tag" and tag["st_info"]["type"] == "STT_FUNC"
        assert tag["st_shndx"] != "SHN_UNDEF"
    check_results(vm, {"cross.before": "console=ttyS0 p", "cross.insmod": "0", "cross.transition": "0",
                "cross.patched": "klp-cross-unit ", "cross.disabled": "gone", "cross.rmmod": "0",
                "cross.restored": "console=ttyS0 p"})


@pytest.mark.parametrize("name", ["binfmt-misc", "printk"])  # loadable; built in (parameters only)
def test_module_name_of_the_kernel_is_refused(kenv, tmp_path, name):
    # The target's module lists next to its symbols, as in an unpacked image: ROOT/boot, ROOT/lib/modules.
    (tmp_path / "boot").mkdir()
    symbols = tmp_path / "boot" / kenv.kallsyms.name
    shutil.copy(kenv.kallsyms, symbols)
    (tmp_path / "lib" / "modules").mkdir(parents=True)
    (tmp_path / "lib" / "modules" / kenv.release).symlink_to(kenv.modules)
    proc = subprocess.run([sys.executable, "-m", "patch_build.kbuild", "-s", os.fspath(kenv.source), "--system-map",
                           os.fspath(symbols), "--headers", os.fspath(kenv.headers), "-o", os.fspath(tmp_path),
                           "-n", name, os.fspath(fixture_patch(kenv, "cmdline-prefix.patch"))],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"module name {name.replace('-', '_')}: the kernel" in errors[0], proc.stderr
    assert not list(tmp_path.glob("*.ko"))
