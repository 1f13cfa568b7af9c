/*
 * LD_PRELOAD shim that applies a linked patch to the program it is preloaded into, without our loader.
 *
 * PATCHSHIM_ELF names an ELF executable (patch.elf) linked at fixed addresses far from the program;
 * PATCHSHIM_REDIRECTS lists "OLD:NEW,OLD:NEW..." (hex) pairs: each old function gets a 5-byte
 * `jmp rel32` to its new one (after an endbr64 landing pad when present).
 *
 * PATCHSHIM_BIND (optional) lists "ADDR:NAME:ADDEND" 64-bit cells of patch.elf to fill with the run-time
 * address of NAME (+ADDEND): symbols of shared libraries the program has no PLT entry for, used as data.
 * PATCHSHIM_EH_FRAME (optional, hex) is the address of patch.elf's .eh_frame: it is registered with the
 * process's unwinder (libgcc's __register_frame, when the program has one) so exceptions can unwind through
 * the new code.
 *
 * The patch is applied the first time the program calls sched_yield() (which this shim interposes), so
 * the program runs its original code first and accumulates state; whatever runs after shows whether the
 * patched code uses that state. Failures print one "patchshim: ..." line and exit 97.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static int applied;

static void die(const char *what)
{
	fprintf(stderr, "patchshim: %s (%s)\n", what, strerror(errno));
	fflush(stderr);
	_exit(97);
}

static long page_size(void)
{
	return sysconf(_SC_PAGESIZE);
}

static int prot_of(uint32_t flags)
{
	return ((flags & PF_R) ? PROT_READ : 0) | ((flags & PF_W) ? PROT_WRITE : 0) |
	       ((flags & PF_X) ? PROT_EXEC : 0);
}

/* Fill the cells of PATCHSHIM_BIND, "ADDR:NAME:ADDEND,...", while the patch is still writable. */
static void bind_symbols(const char *bindings)
{
	char name[256];
	for (const char *p = bindings; p && *p;) {
		char *end;
		uintptr_t addr = strtoull(p, &end, 16);
		const char *start = end + 1, *colon = *end == ':' ? strchr(start, ':') : NULL;
		if (!colon || colon - start >= (long)sizeof name) {
			errno = EINVAL;
			die("bad PATCHSHIM_BIND");
		}
		memcpy(name, start, colon - start);
		name[colon - start] = 0;
		int64_t addend = strtoll(colon + 1, &end, 16);
		void *value = dlsym(RTLD_DEFAULT, name);
		if (!value) {
			errno = ENOENT;
			die("a PATCHSHIM_BIND symbol is not in the process");
		}
		*(uint64_t *)addr = (uint64_t)value + addend;
		p = (*end == ',') ? end + 1 : end;
	}
}

static void map_patch(const char *path)
{
	int fd = open(path, O_RDONLY);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0)
		die("cannot open PATCHSHIM_ELF");
	unsigned char *file = mmap(NULL, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	if (file == MAP_FAILED)
		die("cannot read PATCHSHIM_ELF");
	Elf64_Ehdr *eh = (Elf64_Ehdr *)file;
	if (memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 || eh->e_machine != EM_X86_64) {
		errno = EINVAL;
		die("PATCHSHIM_ELF is not an x86-64 ELF file");
	}
	long ps = page_size();
	/* map and fill every segment writable, bind, then give each its own protection */
	for (int pass = 0; pass < 2; pass++) {
		if (pass == 1)
			bind_symbols(getenv("PATCHSHIM_BIND"));
		for (int i = 0; i < eh->e_phnum; i++) {
			Elf64_Phdr *ph = (Elf64_Phdr *)(file + eh->e_phoff + (size_t)i * eh->e_phentsize);
			if (ph->p_type != PT_LOAD || ph->p_memsz == 0)
				continue;
			uintptr_t start = ph->p_vaddr & ~(uintptr_t)(ps - 1);
			uintptr_t end = (ph->p_vaddr + ph->p_memsz + ps - 1) & ~(uintptr_t)(ps - 1);
			if (pass == 1) {
				if (mprotect((void *)start, end - start, prot_of(ph->p_flags)) < 0)
					die("mprotect of a patch segment failed");
				continue;
			}
			void *at = mmap((void *)start, end - start, PROT_READ | PROT_WRITE,
					MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
			if (at != (void *)start)
				die("cannot map a PT_LOAD segment at its address");
			memcpy((void *)ph->p_vaddr, file + ph->p_offset, ph->p_filesz);
		}
	}
	munmap(file, st.st_size);
	close(fd);
}

static void redirect(uintptr_t old, uintptr_t new_addr)
{
	static const unsigned char endbr64[4] = { 0xf3, 0x0f, 0x1e, 0xfa };
	long ps = page_size();
	if (memcmp((void *)old, endbr64, sizeof endbr64) == 0)
		old += sizeof endbr64;
	uintptr_t page = old & ~(uintptr_t)(ps - 1);
	size_t len = ((old + 5 + ps - 1) & ~(uintptr_t)(ps - 1)) - page;
	if (mprotect((void *)page, len, PROT_READ | PROT_WRITE | PROT_EXEC) < 0)
		die("cannot make old code writable");
	int64_t disp = (int64_t)new_addr - (int64_t)(old + 5);
	if (disp < INT32_MIN || disp > INT32_MAX) {
		errno = ERANGE;
		die("new function out of rel32 range");
	}
	int32_t rel = (int32_t)disp;
	unsigned char jmp[5] = { 0xe9 };
	memcpy(jmp + 1, &rel, 4);
	memcpy((void *)old, jmp, sizeof jmp);
	if (mprotect((void *)page, len, PROT_READ | PROT_EXEC) < 0)
		die("cannot restore old code protection");
}

static void apply_patch(void)
{
	const char *elf = getenv("PATCHSHIM_ELF");
	const char *pairs = getenv("PATCHSHIM_REDIRECTS");
	if (!elf || !pairs) {
		errno = EINVAL;
		die("PATCHSHIM_ELF and PATCHSHIM_REDIRECTS must be set");
	}
	map_patch(elf);
	const char *eh_frame = getenv("PATCHSHIM_EH_FRAME");
	if (eh_frame) {
		void (*register_frame)(void *) = (void (*)(void *))dlsym(RTLD_DEFAULT, "__register_frame");
		if (register_frame)
			register_frame((void *)strtoull(eh_frame, NULL, 16));
	}
	for (const char *p = pairs; *p;) {
		char *end;
		uintptr_t old = strtoull(p, &end, 16);
		if (*end != ':') {
			errno = EINVAL;
			die("bad PATCHSHIM_REDIRECTS");
		}
		uintptr_t new_addr = strtoull(end + 1, &end, 16);
		redirect(old, new_addr);
		p = (*end == ',') ? end + 1 : end;
	}
	applied = 1;
}

/* The program's patch point: it calls sched_yield() where a live patch would land. */
int sched_yield(void)
{
	if (!applied)
		apply_patch();
	return 0;
}
