"""A patch's hooks (templates/user/include/patch-hooks.h), run in the target at their moment of an apply or
a revert: pre_apply before the jumps are written (a non-zero result refuses the apply, which then undoes
everything it did), post_apply once they are, pre_revert before they are taken back, post_revert once they
are gone and before the patch's memory is unmapped. Each is called (loader.remote) by one thread of the
target stopped outside the allocator, the others running, in the order the record lists them. A hook that
fails after the pre_apply one (faults, does not return) cannot stop what is under way: it is a warning.
"""
from __future__ import annotations

from patch_build.common.errors import Refused
from patch_build.loader.frames import registry_of
from patch_build.loader.ptrace import NotStopping
from patch_build.loader.remote import RemoteError
from patch_build.loader.resolve import Resolver
from patch_build.loader.session import Session, in_clear_thread
from patch_build.loader.state import PatchRecord
from patch_build.patchformat.sections import HOOK_STAGES

PRE_APPLY, POST_APPLY, PRE_REVERT, POST_REVERT = HOOK_STAGES


def run_hooks(s: Session, record: PatchRecord, stage: str, timeout: float) -> None:
    """Call the record's hooks of `stage`; Refused when a pre_apply hook returns non-zero."""
    hooks = record.hooks.get(stage, [])
    if not hooks:
        return
    clear = registry_of(s.objects, Resolver(s.objects, {}, s.mem), 0)  # the allocator's entry points
    for name, addr in hooks:
        try:
            result = in_clear_thread(s, clear, lambda caller: caller.call_function(addr), timeout)
        except (RemoteError, NotStopping, Refused) as e:
            if stage == PRE_APPLY:
                raise
            why = getattr(e, "strerror", None) or e
            s.stats.warnings.append(f"{stage} hook {name} of {record.module} failed: {why}")
            continue
        status = int.from_bytes((result & 0xFFFF_FFFF).to_bytes(4, "little"), "little", signed=True)
        if stage == PRE_APPLY and status:
            raise Refused([(name, f"the pre_apply hook of {record.module} returned {status}: not applied")])
