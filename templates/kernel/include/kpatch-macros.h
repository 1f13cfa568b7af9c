/* SPDX-License-Identifier: GPL-2.0 */
/*
 * kpatch's patch macros, as patch-build understands them: a patch written for kpatch-build that includes
 * "kpatch-macros.h" builds unchanged. patch-build adds this folder to the compiler's include path of the
 * units it builds (original and patched).
 *
 * The macros only leave marks in sections of the patched object; the differ (diffobj/kpatch_marks.py)
 * reads them and the generated hook (templates/kernel/livepatch.c.j2) acts on them:
 *   .kpatch.ignore.functions  pointers to functions whose changes are not patched
 *   .kpatch.ignore.sections   pointers to names of sections whose changes are not patched
 *   .kpatch.callbacks.STAGE   {callback, object name} pairs for the klp_object callbacks
 * The marks themselves never reach the patch module except the callback tables. Like kpatch's, each
 * macro is a whole declaration, used at file scope with or without a `;` after it.
 */
#ifndef PATCH_BUILD_KPATCH_MACROS_H
#define PATCH_BUILD_KPATCH_MACROS_H

#include <linux/compiler.h>
#include <linux/livepatch.h>
#include <linux/printk.h>

/* kpatch's name for the object a callback is called for: the livepatch core's klp_object. */
typedef struct klp_object patch_object;

typedef int (*kpatch_pre_patch_call_t)(patch_object *obj);
typedef void (*kpatch_post_patch_call_t)(patch_object *obj);
typedef void (*kpatch_pre_unpatch_call_t)(patch_object *obj);
typedef void (*kpatch_post_unpatch_call_t)(patch_object *obj);

/*
 * The object the unit is linked into, as the livepatch core names it: the module (KBUILD_MODNAME of a
 * -DMODULE build) or vmlinux. The hook gives each callback to the klp_object of this name.
 */
#ifdef MODULE
#define KPATCH_OBJNAME KBUILD_MODNAME
#else
#define KPATCH_OBJNAME "vmlinux"
#endif

#define __KPATCH_CALLBACK(stage, type, fn)						\
	static struct {									\
		type callback;								\
		const char *objname;							\
	} __UNIQUE_ID(kpatch_##stage##_)						\
	__used __section(".kpatch.callbacks." #stage) __aligned(8) = { (fn), KPATCH_OBJNAME };

/*
 * Callbacks of the livepatch core (Documentation/livepatch/callbacks.rst), for the object this unit
 * belongs to: pre_patch may refuse the patch by returning an error; post_patch runs once every task is
 * patched; pre_unpatch and post_unpatch around the way back. One of each per object (vmlinux or a
 * module) in the whole patch: patch-build refuses more.
 */
#define KPATCH_PRE_PATCH_CALLBACK(fn) __KPATCH_CALLBACK(pre_patch, kpatch_pre_patch_call_t, fn)
#define KPATCH_POST_PATCH_CALLBACK(fn) __KPATCH_CALLBACK(post_patch, kpatch_post_patch_call_t, fn)
#define KPATCH_PRE_UNPATCH_CALLBACK(fn) __KPATCH_CALLBACK(pre_unpatch, kpatch_pre_unpatch_call_t, fn)
#define KPATCH_POST_UNPATCH_CALLBACK(fn) __KPATCH_CALLBACK(post_unpatch, kpatch_post_unpatch_call_t, fn)

/*
 * Changes to this function are not patched: the running kernel keeps its version (for a function that
 * only changed as a side effect, e.g. a moved line number in a WARN).
 */
#define KPATCH_IGNORE_FUNCTION(fn)							\
	static void *__UNIQUE_ID(kpatch_ignore_function_)				\
	__used __section(".kpatch.ignore.functions") = (fn);

/* Changes to the section of this name (a string) are not patched. */
#define KPATCH_IGNORE_SECTION(name)							\
	static const char *__UNIQUE_ID(kpatch_ignore_section_)				\
	__used __section(".kpatch.ignore.sections") = (name);

/*
 * printk on a path of its own. printk is __cold, and gcc moves the code around a call to it into
 * .text.unlikely or out of line, which changes functions the patch did not touch. The condition is one
 * gcc cannot see through (the empty asm may have changed it), so the call is a branch of its own.
 */
#define KPATCH_PRINTK(fmt, ...)								\
({											\
	int __kpatch_print = 1;								\
	asm volatile("" : "+r" (__kpatch_print));					\
	if (__kpatch_print)								\
		printk(fmt, ##__VA_ARGS__);						\
})

/*
 * Shadow variables: the kernel's own API of <linux/livepatch.h> (klp_shadow_get, klp_shadow_alloc,
 * klp_shadow_get_or_alloc, klp_shadow_free, klp_shadow_free_all), included above.
 */

#endif /* PATCH_BUILD_KPATCH_MACROS_H */
