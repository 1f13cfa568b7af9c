/* SPDX-License-Identifier: GPL-2.0 */
/*
 * KPATCH_SYSCALL_DEFINE1..6: write a patched system call with these instead of SYSCALL_DEFINE1..6.
 *
 * The kernel's SYSCALL_DEFINEn(name) puts the body in `static inline __do_sys_name`, and the kernel's
 * `inline` means notrace: when gcc keeps it out of line, the changed function has no fentry call and
 * cannot be redirected. Here the body gets another name (__kpatch_do_sys_name), so it is a new function
 * of the patch, and the change shows in the entry points __x64_sys_name / __ia32_sys_name, which have
 * their fentry call and are what the livepatch redirects. The syscall tracing metadata of SYSCALL_DEFINE
 * (__syscalls_metadata, _ftrace_events) is left out: the running kernel keeps its own, and the differ is
 * told to ignore those sections.
 */
#ifndef PATCH_BUILD_KPATCH_SYSCALL_H
#define PATCH_BUILD_KPATCH_SYSCALL_H

#include <linux/syscalls.h>
#include "kpatch-macros.h"

#define KPATCH_SYSCALL_DEFINE1(name, ...) KPATCH_SYSCALL_DEFINEx(1, _##name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE2(name, ...) KPATCH_SYSCALL_DEFINEx(2, _##name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE3(name, ...) KPATCH_SYSCALL_DEFINEx(3, _##name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE4(name, ...) KPATCH_SYSCALL_DEFINEx(4, _##name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE5(name, ...) KPATCH_SYSCALL_DEFINEx(5, _##name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE6(name, ...) KPATCH_SYSCALL_DEFINEx(6, _##name, __VA_ARGS__)

#define KPATCH_SYSCALL_DEFINEx(x, sname, ...)						\
	KPATCH_IGNORE_SECTION("__syscalls_metadata");					\
	KPATCH_IGNORE_SECTION("_ftrace_events");					\
	__KPATCH_SYSCALL_DEFINEx(x, sname, __VA_ARGS__)

#if defined(CONFIG_X86_64) && defined(__X64_SYS_STUBx)
/* The stubs of arch/x86/include/asm/syscall_wrapper.h, around a renamed body. */
#define __KPATCH_SYSCALL_DEFINEx(x, name, ...)						\
	static long __se_sys##name(__MAP(x, __SC_LONG, __VA_ARGS__));			\
	static inline long __kpatch_do_sys##name(__MAP(x, __SC_DECL, __VA_ARGS__));	\
	__X64_SYS_STUBx(x, name, __VA_ARGS__)						\
	__IA32_SYS_STUBx(x, name, __VA_ARGS__)						\
	static long __se_sys##name(__MAP(x, __SC_LONG, __VA_ARGS__))			\
	{										\
		long ret = __kpatch_do_sys##name(__MAP(x, __SC_CAST, __VA_ARGS__));	\
		__MAP(x, __SC_TEST, __VA_ARGS__);					\
		__PROTECT(x, ret, __MAP(x, __SC_ARGS, __VA_ARGS__));			\
		return ret;								\
	}										\
	static inline long __kpatch_do_sys##name(__MAP(x, __SC_DECL, __VA_ARGS__))
#else
#error "kpatch-syscall.h: patch-build supports x86-64 kernels (arch/x86/include/asm/syscall_wrapper.h)"
#endif

#endif /* PATCH_BUILD_KPATCH_SYSCALL_H */
