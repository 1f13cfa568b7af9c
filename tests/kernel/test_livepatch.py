"""Livepatch modules built by patch-build, loaded into each Debian kernel line (6.1, 6.12) booted in qemu.

One VM boot runs every check in sequence (its init script prints `R key=value` lines):
1. meminfo-string: /proc/meminfo shows VMALLOCCHUNK, the transition reaches 0, disabling restores it;
2. stat-static-call: new code in show_stat calls get_iowait_time, static and unexported (klp relocation);
   fdinfo-sympos: seq_show of fs/proc/fd.c, one of two seq_show in vmlinux (livepatch sympos 1);
   vfs-read-special: vfs_read, with BUG, retpoline and return-thunk sites, refuses 4093-byte reads;
3. binfmt-status: a function of the binfmt_misc module, loaded first; ttyprintk-prefix: functions of the
   ttyprintk module, loaded AFTER the livepatch (the livepatch core patches it as it comes, resolving the
   module's own klp relocations then); vmlinux-and-module: one patch changing version_proc_show (vmlinux) and
   bm_status_read (binfmt_misc), both effects seen at once, both gone when disabled;
4. atomic replace: meminfo-string, then cmdline-prefix: only the second stays in effect; then
   stat-static-call built with --non-replace joins it instead of replacing it.
"""
from __future__ import annotations

import json
import re

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

from qemu_vm import LIVEPATCH_SHELL, built_module, check_results, run_vm, vm_results

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

MODULES = {  # fixture patch -> livepatch name
    "meminfo-string.patch": "meminfo_string",
    "stat-static-call.patch": "stat_static_call",
    "binfmt-status.patch": "binfmt_status",
    "cmdline-prefix.patch": "cmdline_prefix",
    "fdinfo-sympos.patch": "fdinfo_sympos",
    "ttyprintk-prefix.patch": "ttyprintk_prefix",
    "vfs-read-special.patch": "vfs_read_special",
    "vmlinux-and-module.patch": "vmlinux_and_module",
}
SHF_RELA_LIVEPATCH, SHN_LIVEPATCH = 0x00100000, 0xFF20

SCRIPT = LIVEPATCH_SHELL + r"""
chunk() { grep -o '^V[A-Za-z]*[Cc][Hh][Uu][Nn][Kk]' /proc/meminfo; }

if [ -f /meminfo_string.ko ]; then
    echo "R meminfo.before=$(chunk)"
    insmod /meminfo_string.ko; echo "R meminfo.insmod=$?"
    echo "R meminfo.transition=$(wait_transition meminfo_string)"
    echo "R meminfo.enabled=$(cat /sys/kernel/livepatch/meminfo_string/enabled)"
    echo "R meminfo.patched=$(chunk)"
    disable meminfo_string meminfo
    echo "R meminfo.restored=$(chunk)"
fi

if [ -f /stat_static_call.ko ]; then
    echo "R static.before=$(grep -c '^klp_static_iowait' /proc/stat)"
    insmod /stat_static_call.ko; echo "R static.insmod=$?"
    echo "R static.transition=$(wait_transition stat_static_call)"
    echo "R static.line=$(grep '^klp_static_iowait' /proc/stat)"
    disable stat_static_call static
    echo "R static.restored=$(grep -c '^klp_static_iowait' /proc/stat)"
fi

if [ -f /fdinfo_sympos.ko ]; then
    echo "R sympos.before=$(grep -c '^klp:' /proc/self/fdinfo/0)"
    insmod /fdinfo_sympos.ko; echo "R sympos.insmod=$?"
    echo "R sympos.transition=$(wait_transition fdinfo_sympos)"
    echo "R sympos.patched=$(grep '^klp:' /proc/self/fdinfo/0)"
    disable fdinfo_sympos sympos
    echo "R sympos.restored=$(grep -c '^klp:' /proc/self/fdinfo/0)"
fi

if [ -f /vfs_read_special.ko ]; then
    read4093() { dd if=/proc/version of=/dev/null bs=4093 count=1 2>/tmp/dd.err; echo "rc=$? $(grep -o 'ioctl for device' /tmp/dd.err)"; }
    echo "R vfsread.before=$(read4093)"
    insmod /vfs_read_special.ko; echo "R vfsread.insmod=$?"
    echo "R vfsread.transition=$(wait_transition vfs_read_special)"
    echo "R vfsread.patched=$(read4093)"
    echo "R vfsread.other=$(dd if=/proc/version bs=4092 count=1 2>/dev/null | cut -c1-13)"
    disable vfs_read_special vfsread
    echo "R vfsread.restored=$(read4093)"
fi

if [ -f /binfmt_status.ko ]; then
    insmod /lib/modules/binfmt_misc.ko; echo "R module.target_insmod=$?"
    mount -t binfmt_misc none /proc/sys/fs/binfmt_misc
    echo "R module.before=$(cat /proc/sys/fs/binfmt_misc/status)"
    insmod /binfmt_status.ko; echo "R module.insmod=$?"
    echo "R module.transition=$(wait_transition binfmt_status)"
    echo "R module.patched=$(cat /proc/sys/fs/binfmt_misc/status)"
    if [ -f /vmlinux_and_module.ko ]; then
        insmod /vmlinux_and_module.ko; echo "R both.insmod=$?"
        echo "R both.transition=$(wait_transition vmlinux_and_module)"
        echo "R both.vmlinux=$(cut -c1-22 /proc/version)"
        echo "R both.module=$(cat /proc/sys/fs/binfmt_misc/status)"
        echo "R both.objects=$(cd /sys/kernel/livepatch/vmlinux_and_module && ls -d */ | tr -d / | tr '\n' ' ')"
        disable vmlinux_and_module both
        echo "R both.restored=$(cut -c1-13 /proc/version) $(cat /proc/sys/fs/binfmt_misc/status)"
    fi
fi

if [ -f /ttyprintk_prefix.ko ]; then
    insmod /ttyprintk_prefix.ko; echo "R late.insmod=$?"
    echo "R late.transition=$(wait_transition ttyprintk_prefix)"
    echo "R late.binfmt_replaced=$(wait_gone binfmt_status)"
    insmod /lib/modules/ttyprintk.ko; echo "R late.target_insmod=$?"
    echo first-line > /dev/ttyprintk
    echo "R late.patched=$(dmesg | grep -o '\[U[^]]*\] first-line')"
    disable ttyprintk_prefix late
    echo second-line > /dev/ttyprintk
    echo "R late.restored=$(dmesg | grep -o '\[U[^]]*\] second-line')"
fi

if [ -f /meminfo_string.ko ] && [ -f /cmdline_prefix.ko ]; then
    insmod /meminfo_string.ko; echo "R replace.first_insmod=$?"
    echo "R replace.first_transition=$(wait_transition meminfo_string)"
    echo "R replace.first_patched=$(chunk)"
    insmod /cmdline_prefix.ko; echo "R replace.second_insmod=$?"
    echo "R replace.second_transition=$(wait_transition cmdline_prefix)"
    echo "R replace.first_sysfs=$(wait_gone meminfo_string)"
    echo "R replace.meminfo=$(chunk)"
    echo "R replace.cmdline=$(cut -c1-12 /proc/cmdline)"
    echo "R replace.patches=$(ls /sys/kernel/livepatch | tr '\n' ' ')"
    if [ -f /stat_nonreplace.ko ]; then
        insmod /stat_nonreplace.ko; echo "R nonreplace.insmod=$?"
        echo "R nonreplace.transition=$(wait_transition stat_nonreplace)"
        echo "R nonreplace.patches=$(ls /sys/kernel/livepatch | tr '\n' ' ')"
        echo "R nonreplace.cmdline=$(cut -c1-12 /proc/cmdline)"
        echo "R nonreplace.stat=$(grep -c '^klp_static_iowait' /proc/stat)"
    fi
fi
"""


@pytest.fixture(scope="module")
def modules(patch_build, tmp_path_factory):
    out = tmp_path_factory.mktemp("kernel-modules")
    built = {name: patch_build(patch, out, "-n", name) for patch, name in MODULES.items()}
    built["stat_nonreplace"] = patch_build("stat-static-call.patch", out, "--non-replace", "-n", "stat_nonreplace")
    return built


@pytest.fixture(scope="module")
def vm(kenv, modules) -> dict[str, str]:
    files = {f"/{name}.ko": b.module for name, b in modules.items() if b.ok}
    for target in ("binfmt_misc", "ttyprintk"):
        files[f"/lib/modules/{target}.ko"] = kenv.module(target)
    console = run_vm(kenv.vmlinuz, SCRIPT, files)
    return vm_results(console)




def test_meminfo_string(modules, vm):
    built_module(modules, "meminfo_string")
    check_results(vm, {"meminfo.before": "VmallocChunk", "meminfo.insmod": "0", "meminfo.transition": "0",
                "meminfo.enabled": "1", "meminfo.patched": "VMALLOCCHUNK", "meminfo.disabled": "gone",
                "meminfo.rmmod": "0", "meminfo.restored": "VmallocChunk"})


def test_module_is_a_livepatch_with_matching_vermagic(kenv, modules):
    path = built_module(modules, "meminfo_string")
    with open(path, "rb") as f:
        info = ELFFile(f).get_section_by_name(".modinfo").data().split(b"\0")
    assert b"livepatch=Y" in info
    assert any(v.startswith(f"vermagic={kenv.release} ".encode()) for v in info)


def test_static_call_uses_klp_relocation(modules, vm):
    path = built_module(modules, "stat_static_call")
    with open(path, "rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        klp_targets = set()
        for sec in elf.iter_sections():
            if not isinstance(sec, RelocationSection):
                continue
            names = {symtab.get_symbol(r["r_info_sym"]).name for r in sec.iter_relocations()}
            klp_names = {n for n in names if n.startswith(".klp.sym.")}
            if sec.name.startswith(".klp.rela."):
                assert sec["sh_flags"] & SHF_RELA_LIVEPATCH and sec["sh_flags"] & 0x2, sec.name
                assert klp_names == names, f"{sec.name} holds ordinary relocations"
                klp_targets |= names
            else:
                assert not klp_names, f"{sec.name} still relocates against {sorted(klp_names)}"
        for sym in symtab.iter_symbols():
            if sym.name.startswith(".klp.sym."):
                assert sym["st_shndx"] == SHN_LIVEPATCH, sym.name
    assert ".klp.sym.vmlinux.get_iowait_time,0" in klp_targets
    assert re.fullmatch(r"klp_static_iowait \d+", vm.get("static.line", "")), vm["console"][-4000:]
    check_results(vm, {"static.before": "0", "static.insmod": "0", "static.transition": "0", "static.disabled": "gone",
                "static.rmmod": "0", "static.restored": "0"})


def test_duplicate_local_name_sympos(modules, vm):
    path = built_module(modules, "fdinfo_sympos")
    report = json.loads(path.with_suffix(".report.json").read_text())
    [change] = [f for f in report["objects"][0]["functions"] if f["status"] == "changed"]
    assert (change["old_name"], change["sympos"]) == ("seq_show", 1)
    check_results(vm, {"sympos.before": "0", "sympos.insmod": "0", "sympos.transition": "0",
                "sympos.patched": "klp:\tseq_show of fs/proc/fd.c", "sympos.disabled": "gone", "sympos.rmmod": "0",
                "sympos.restored": "0"})


def test_hot_function_with_special_sections(modules, vm):
    built_module(modules, "vfs_read_special")
    check_results(vm, {"vfsread.before": "rc=0 ", "vfsread.insmod": "0", "vfsread.transition": "0",
                "vfsread.patched": "rc=1 ioctl for device", "vfsread.other": "Linux version",
                "vfsread.disabled": "gone", "vfsread.rmmod": "0", "vfsread.restored": "rc=0 "})


def test_module_function(modules, vm):
    built_module(modules, "binfmt_status")
    check_results(vm, {"module.target_insmod": "0", "module.before": "enabled", "module.insmod": "0",
                "module.transition": "0", "module.patched": "ENABLED (patched)"})


def test_vmlinux_and_module_in_one_patch(modules, vm):
    # One module, two klp objects: vmlinux and binfmt_misc (loaded by then); it replaces binfmt_status.
    path = built_module(modules, "vmlinux_and_module")
    report = json.loads(path.with_suffix(".report.json").read_text())
    changed = {(o["source"], f["name"]) for o in report["objects"] for f in o["functions"]
               if f["status"] == "changed"}
    assert changed == {("fs/proc/version.c", "version_proc_show"), ("fs/binfmt_misc.c", "bm_status_read")}
    check_results(vm, {"both.insmod": "0", "both.transition": "0", "both.vmlinux": "klp-both Linux version",
                       "both.module": "enabled (both)", "both.objects": "binfmt_misc vmlinux ",
                       "both.disabled": "gone", "both.rmmod": "0", "both.restored": "Linux version enabled"})


def test_module_loaded_after_the_patch(modules, vm):
    path = built_module(modules, "ttyprintk_prefix")
    with open(path, "rb") as f:
        klp = [s.name for s in ELFFile(f).iter_sections() if s.name.startswith(".klp.rela.")]
    assert klp and all(n.startswith(".klp.rela.ttyprintk.") for n in klp), klp
    check_results(vm, {"late.insmod": "0", "late.transition": "0", "late.target_insmod": "0",
                "late.patched": "[U-klp] first-line", "late.disabled": "gone", "late.rmmod": "0",
                "late.restored": "[U] second-line"})
    if "module.patched" in vm:  # atomic replace: the binfmt_misc patch made way
        assert vm["late.binfmt_replaced"] == "gone"


def test_atomic_replace(modules, vm):
    built_module(modules, "meminfo_string")
    built_module(modules, "cmdline_prefix")
    check_results(vm, {"replace.first_insmod": "0", "replace.first_transition": "0", "replace.first_patched": "VMALLOCCHUNK",
                "replace.second_insmod": "0", "replace.second_transition": "0", "replace.first_sysfs": "gone",
                "replace.meminfo": "VmallocChunk", "replace.cmdline": "klp-cmdline ",
                "replace.patches": "cmdline_prefix "})
    built_module(modules, "stat_nonreplace")
    check_results(vm, {"nonreplace.insmod": "0", "nonreplace.transition": "0",
                "nonreplace.patches": "cmdline_prefix stat_nonreplace ", "nonreplace.cmdline": "klp-cmdline ",
                "nonreplace.stat": "1"})
