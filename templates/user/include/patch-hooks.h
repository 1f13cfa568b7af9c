/*
 * patch-hooks.h: functions of a user-space patch that `patch-ctl` runs in the target around the patch.
 *
 *     #include "patch-hooks.h"
 *     static int check_ready(void) { return ready ? 0 : -1; }   // non-zero: the apply is refused
 *     static void migrate(void) { ... }
 *     PATCH_PRE_APPLY(check_ready);
 *     PATCH_POST_APPLY(migrate);
 *
 * PATCH_PRE_APPLY(fn)   int fn(void), before the jumps are written; non-zero aborts the apply (the target is
 *                       left as it was, patch-ctl exits 1 naming fn and its value)
 * PATCH_POST_APPLY(fn)  void fn(void), once every jump is in place
 * PATCH_PRE_REVERT(fn)  void fn(void), before the jumps are taken back
 * PATCH_POST_REVERT(fn) void fn(void), once they are gone, before the patch's memory is unmapped
 *
 * One hook per stage in a patch (the compiler does not keep definitions in source order: let one hook call
 * the others in the order they must run). Each runs in one thread of the target, stopped outside the
 * allocator, the others running: a hook must not wait for a lock another thread of the program may hold
 * while stopped there (a call that does not return within 5 s is abandoned). patch-build keeps them in the
 * module (section .kpatch.hooks.STAGE: a pointer to the hook), `patch-ctl info` lists them.
 */
#ifndef PATCH_HOOKS_H
#define PATCH_HOOKS_H

typedef int (*patch_pre_apply_hook)(void);
typedef void (*patch_hook)(void);

#define __PATCH_HOOK(stage, type, fn)                                                                   \
	static type const __patch_hook_##stage##_##fn                                                   \
		__attribute__((used, section(".kpatch.hooks." #stage), aligned(8))) = (fn)

#define PATCH_PRE_APPLY(fn) __PATCH_HOOK(pre_apply, patch_pre_apply_hook, fn)
#define PATCH_POST_APPLY(fn) __PATCH_HOOK(post_apply, patch_hook, fn)
#define PATCH_PRE_REVERT(fn) __PATCH_HOOK(pre_revert, patch_hook, fn)
#define PATCH_POST_REVERT(fn) __PATCH_HOOK(post_revert, patch_hook, fn)

#endif
