/*
 * patch-shadow.h: shadow variables for user-space patches: new fields attached to objects the running
 * program already has (the fix needs one more member in a struct whose instances are live).
 *
 *     #include "patch-shadow.h"
 *     #define CONN_REQUESTS 1                        // the shadow variable's id: any number of the patch's
 *     long *n = patch_shadow_alloc(conn, CONN_REQUESTS, sizeof *n);   // zeroed at first, then the same one
 *     if (n) ++*n;
 *     ... patch_shadow_get(conn, CONN_REQUESTS) ...   // NULL until allocated
 *     patch_shadow_free(conn, CONN_REQUESTS);         // when conn goes away
 *
 * The runtime is this header: its functions and table are weak definitions, so the patched build links as
 * any other, and the differ finds them new and carries them into the patch module: the table lives in the
 * patch's own memory, the blocks come from the target's calloc/free. A revert unmaps the table: free what
 * is left first (PATCH_POST_REVERT of a function calling patch_shadow_free_all(ID), patch-hooks.h). Two
 * patches do not share their shadow variables. Thread-safe (a spin lock around the table).
 */
#ifndef PATCH_SHADOW_H
#define PATCH_SHADOW_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PATCH_SHADOW_BUCKETS 1024

struct patch_shadow_node {
	struct patch_shadow_node *next;
	const void *obj;
	unsigned long id;
	size_t size; /* the data follows, 16-byte aligned (the node is 32 bytes, calloc's blocks 16-aligned) */
};

__attribute__((weak)) struct patch_shadow_node *patch_shadow_table[PATCH_SHADOW_BUCKETS] = {0};
__attribute__((weak)) int patch_shadow_lock = 0;

static inline struct patch_shadow_node **patch_shadow_bucket(const void *obj, unsigned long id)
{
	uint64_t h = ((uint64_t)(uintptr_t)obj >> 4) ^ ((uint64_t)id * 0x9E3779B97F4A7C15ull);
	return &patch_shadow_table[(h ^ (h >> 29)) % PATCH_SHADOW_BUCKETS];
}

static inline void patch_shadow_take(void)
{
	while (__atomic_exchange_n(&patch_shadow_lock, 1, __ATOMIC_ACQUIRE))
		__builtin_ia32_pause();
}

static inline void patch_shadow_give(void)
{
	__atomic_store_n(&patch_shadow_lock, 0, __ATOMIC_RELEASE);
}

/* The shadow variable `id` of `obj`, or NULL when it has none. */
__attribute__((weak, noinline)) void *patch_shadow_get(const void *obj, unsigned long id)
{
	struct patch_shadow_node *n;
	patch_shadow_take();
	for (n = *patch_shadow_bucket(obj, id); n && (n->obj != obj || n->id != id); n = n->next)
		;
	patch_shadow_give();
	return n ? (void *)(n + 1) : NULL;
}

/* The shadow variable `id` of `obj`: the existing one, else `size` new zeroed bytes (NULL if out of memory). */
__attribute__((weak, noinline)) void *patch_shadow_alloc(const void *obj, unsigned long id, size_t size)
{
	struct patch_shadow_node **head = patch_shadow_bucket(obj, id), *n;
	patch_shadow_take();
	for (n = *head; n && (n->obj != obj || n->id != id); n = n->next)
		;
	if (!n) {
		n = (struct patch_shadow_node *)calloc(1, sizeof *n + size);
		if (n) {
			n->obj = obj;
			n->id = id;
			n->size = size;
			n->next = *head;
			*head = n;
		}
	}
	patch_shadow_give();
	return n ? (void *)(n + 1) : NULL;
}

/* Free the shadow variable `id` of `obj`, if it has one. */
__attribute__((weak, noinline)) void patch_shadow_free(const void *obj, unsigned long id)
{
	struct patch_shadow_node **p, *n = NULL;
	patch_shadow_take();
	for (p = patch_shadow_bucket(obj, id); *p; p = &(*p)->next) {
		if ((*p)->obj == obj && (*p)->id == id) {
			n = *p;
			*p = n->next;
			break;
		}
	}
	patch_shadow_give();
	free(n);
}

/* Free every shadow variable `id` (of any object): before a revert takes the table away. */
__attribute__((weak, noinline)) void patch_shadow_free_all(unsigned long id)
{
	size_t i;
	patch_shadow_take();
	for (i = 0; i < PATCH_SHADOW_BUCKETS; i++) {
		struct patch_shadow_node **p = &patch_shadow_table[i];
		while (*p) {
			struct patch_shadow_node *n = *p;
			if (n->id == id) {
				*p = n->next;
				free(n);
			} else {
				p = &n->next;
			}
		}
	}
	patch_shadow_give();
}

#ifdef __cplusplus
}
#endif

#endif
