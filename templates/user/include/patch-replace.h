/*
 * patch-replace.h: declare the replacements of a hand-written patch library for `patch-ctl apply`.
 *
 *     #include "patch-replace.h"
 *     void func_v2(int x) { ... }
 *     PATCH_REPLACE(func, func_v2);
 *
 * Build with `gcc -fPIC -shared -o fix.so fix.c`, then `patch-ctl apply -p PID fix.so`: the library is
 * loaded with the process's own dlopen, and calls of each old function (of the program or of a library
 * it has loaded, found by name) are sent to its replacement; `patch-ctl revert -p PID fix` undoes it.
 * The table is the `patch_replace` section: keep it when linking with --gc-sections. Old functions are
 * named as the process's symbol tables name them: C++ ones by their mangled names.
 */
#ifndef PATCH_REPLACE_H
#define PATCH_REPLACE_H

struct patch_replace {
	const char *old_function;   /* its name in the process */
	void (*new_function)(void); /* a function of this library, of any type */
};

#define PATCH_REPLACE(old_function, new_function)                                                       \
	static const struct patch_replace __patch_replace_##new_function                                \
		__attribute__((used, section("patch_replace"), aligned(16))) = { #old_function,             \
										  (void (*)(void))(new_function) }

#endif
