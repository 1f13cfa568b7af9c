"""kpatch's patch macros (templates/kernel/include): kpatch patches that include kpatch-macros.h or
kpatch-syscall.h build unchanged and work in each Debian kernel line, booted once per line in qemu:
1. kpatch-callbacks: KPATCH_{PRE,POST}_{PATCH,UNPATCH}_CALLBACK print (KPATCH_PRINTK) their stage and
   object; dmesg shows pre_patch, post_patch on load, pre_unpatch, post_unpatch on disable, nothing on unload;
   kpatch-callback-only: callbacks and no changed function make a livepatch too;
2. kpatch-shadow-newpid: a shadow variable (klp_shadow_get_or_alloc) gives every task_struct, existing
   ones included, a `newpid` in /proc/PID/status, kept across reads, freed by a post_unpatch callback;
3. kpatch-syscall-newuname: KPATCH_SYSCALL_DEFINE1(newuname) changes the system call (`uname -m`), which
   is live-patched through __x64_sys_newuname (the same change with SYSCALL_DEFINE1 is refused: gcc keeps
   __do_sys_newuname out of line, without an fentry call, test_rejections.py); the syscall tracing
   metadata the patched unit lacks is ignored, as the header says.
"""
from __future__ import annotations

import json

import pytest

from qemu_vm import LIVEPATCH_SHELL, built_module, check_results, run_vm, vm_results

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

MODULES = {  # fixture patch -> livepatch name
    "kpatch-callbacks.patch": "kpatch_callbacks",
    "kpatch-callback-only.patch": "kpatch_callback_only",
    "kpatch-shadow-newpid.patch": "kpatch_newpid",
    "kpatch-syscall-newuname.patch": "kpatch_newuname",
}

SCRIPT = LIVEPATCH_SHELL + r"""
callbacks() { dmesg | grep -o 'livepatch_callbacks: [a-z_]* [a-z]*' | cut -d' ' -f2,3 | tr '\n' ','; }

if [ -f /kpatch_callbacks.ko ]; then
    echo "R cb.before=$(callbacks)"
    insmod /kpatch_callbacks.ko; echo "R cb.insmod=$?"
    echo "R cb.transition=$(wait_transition kpatch_callbacks)"
    echo "R cb.loaded=$(callbacks)"
    echo "R cb.patched=$(grep -c '^livepatch_callbacks$' /proc/version)"
    echo 0 > /sys/kernel/livepatch/kpatch_callbacks/enabled
    echo "R cb.disabled=$(wait_gone kpatch_callbacks)"
    echo "R cb.after_disable=$(callbacks)"
    echo "R cb.restored=$(grep -c '^livepatch_callbacks$' /proc/version)"
    rmmod kpatch_callbacks; echo "R cb.rmmod=$?"
    echo "R cb.after_unload=$(callbacks)"
fi

only() { dmesg | grep -o 'livepatch_callback_only: [a-z_]* [a-z]*' | cut -d' ' -f2,3 | tr '\n' ','; }
if [ -f /kpatch_callback_only.ko ]; then
    insmod /kpatch_callback_only.ko; echo "R only.insmod=$?"
    echo "R only.transition=$(wait_transition kpatch_callback_only)"
    echo "R only.loaded=$(only)"
    disable kpatch_callback_only only
    echo "R only.unloaded=$(only)"
fi

newpid() { grep '^newpid:' "$1" | cut -f2; }
if [ -f /kpatch_newpid.ko ]; then
    echo "R newpid.before=$(grep -c '^newpid:' /proc/1/status)"
    insmod /kpatch_newpid.ko; echo "R newpid.insmod=$?"
    echo "R newpid.transition=$(wait_transition kpatch_newpid)"
    echo "R newpid.init=$(newpid /proc/1/status)"
    echo "R newpid.init_again=$(newpid /proc/1/status)"
    echo "R newpid.shell=$(newpid /proc/$$/status)"
    echo "R newpid.self=$(newpid /proc/self/status)"
    disable kpatch_newpid newpid
    echo "R newpid.restored=$(grep -c '^newpid:' /proc/1/status)"
fi

if [ -f /kpatch_newuname.ko ]; then
    echo "R uname.before=$(uname -m)"
    insmod /kpatch_newuname.ko; echo "R uname.insmod=$?"
    echo "R uname.transition=$(wait_transition kpatch_newuname)"
    echo "R uname.patched=$(uname -m)"
    echo "R uname.release=$(uname -r)"
    disable kpatch_newuname uname
    echo "R uname.restored=$(uname -m)"
fi
"""


@pytest.fixture(scope="module")
def modules(patch_build, tmp_path_factory):
    out = tmp_path_factory.mktemp("kpatch-macros")
    return {name: patch_build(patch, out, "-n", name) for patch, name in MODULES.items()}


@pytest.fixture(scope="module")
def vm(kenv, modules) -> dict[str, str]:
    files = {f"/{name}.ko": b.module for name, b in modules.items() if b.ok}
    console = run_vm(kenv.vmlinuz, SCRIPT, files)
    return vm_results(console)




def test_callbacks_run_in_order_on_load_and_disable(modules, vm):
    built_module(modules, "kpatch_callbacks")
    loaded = "pre_patch vmlinux,post_patch vmlinux,"
    unpatched = loaded + "pre_unpatch vmlinux,post_unpatch vmlinux,"
    check_results(vm, {"cb.before": "", "cb.insmod": "0", "cb.transition": "0", "cb.loaded": loaded, "cb.patched": "1",
                "cb.disabled": "gone", "cb.after_disable": unpatched, "cb.restored": "0", "cb.rmmod": "0",
                "cb.after_unload": unpatched})


def test_callbacks_without_a_changed_function(modules, vm):
    path = built_module(modules, "kpatch_callback_only")
    report = json.loads(path.with_suffix(".report.json").read_text())
    statuses = {f["name"]: f["status"] for o in report["objects"] for f in o["functions"]}
    assert "changed" not in statuses.values(), statuses
    assert {n for n, s in statuses.items() if s == "new"} == {"only_pre_patch", "only_post_unpatch"}, statuses
    check_results(vm, {"only.insmod": "0", "only.transition": "0", "only.loaded": "pre_patch vmlinux,",
                "only.disabled": "gone", "only.rmmod": "0",
                "only.unloaded": "pre_patch vmlinux,post_unpatch vmlinux,"})


def test_shadow_variable_gives_existing_tasks_a_new_field(modules, vm):
    """Values come from a counter, in the order the tasks are first seen: pid 1 keeps its value across
    reads by two processes, the shell and the reader get the next ones; gone once the patch is disabled."""
    built_module(modules, "kpatch_newpid")
    check_results(vm, {"newpid.before": "0", "newpid.insmod": "0", "newpid.transition": "0", "newpid.init": "1001",
                "newpid.init_again": "1001", "newpid.shell": "1002", "newpid.self": "1003",
                "newpid.disabled": "gone", "newpid.rmmod": "0", "newpid.restored": "0"})


def test_kpatch_syscall_define_is_live_patched(kenv, modules, vm):
    built_module(modules, "kpatch_newuname")
    check_results(vm, {"uname.before": "x86_64", "uname.insmod": "0", "uname.transition": "0",
                "uname.patched": "klp-x86_64", "uname.release": kenv.release, "uname.disabled": "gone",
                "uname.rmmod": "0", "uname.restored": "x86_64"})


def test_kpatch_syscall_leaves_the_tracing_metadata_to_the_running_kernel(modules):
    """SYSCALL_DEFINE's metadata is missing from the patched unit; kpatch-syscall.h says to ignore it."""
    report = json.loads(built_module(modules, "kpatch_newuname").with_suffix(".report.json").read_text())
    [obj] = report["objects"]
    assert {f["name"] for f in obj["functions"] if f["status"] == "changed"} == {"__x64_sys_newuname",
                                                                                  "__ia32_sys_newuname"}
    ignored = sorted(w["message"].split(" changed")[0] for w in obj["warnings"] if "KPATCH_IGNORE" in w["message"])
    assert ignored == ["section __syscalls_metadata", "section _ftrace_events"], obj["warnings"]
