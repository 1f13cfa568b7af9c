#!/usr/bin/env python3
"""patch-build on a 200-source-file C program with a one-line fix: where the time goes.

Prints the time of each step (copy, original build, patched rebuild, diff, link, report) and the share of everything but
the two builds (target: under 10%). Run by hand: `python3 bench/build_bench.py [--files N] [-j JOBS]`.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from patch_build.kbuild.options import BuildOptions  # noqa: E402
from patch_build.kbuild.userspace import build_user_patch  # noqa: E402

MAKEFILE = """CFLAGS ?= -O2 -g -Wall
SRCS := $(wildcard src/*.c)
OBJS := $(SRCS:.c=.o)

prog: $(OBJS)
\t$(CC) $(CFLAGS) -o $@ $(OBJS)

%.o: %.c
\t$(CC) $(CFLAGS) -MMD -MP -c -o $@ $<

-include $(OBJS:.o=.d)
"""

UNIT = """#include <string.h>
#include "common.h"

static int table_{i}[64];

static int mix_{i}(int x)
{{
	return (x * {m}) ^ (x >> 3);
}}

int unit_{i}_step(int x)
{{
	int acc = 0;

	for (int k = 0; k < 64; k++) {{
		table_{i}[k] = mix_{i}(x + k);
		acc += table_{i}[k] % {limit};
	}}
	return acc + unit_{i}_name()[0];
}}

const char *unit_{i}_name(void)
{{
	static char name[32];

	if (!name[0])
		strcpy(name, "unit-{i}");
	return name;
}}
"""


def make_fixture(root: Path, files: int) -> Path:
    (root / "src").mkdir(parents=True)
    (root / "Makefile").write_text(MAKEFILE)
    decls = "".join(f"int unit_{i}_step(int x);\nconst char *unit_{i}_name(void);\n" for i in range(files))
    (root / "src" / "common.h").write_text(f"#ifndef COMMON_H\n#define COMMON_H\n{decls}#endif\n")
    for i in range(files):
        (root / "src" / f"unit{i:03d}.c").write_text(UNIT.format(i=i, m=i * 7 + 3, limit=1000 + i))
    calls = "".join(f"\tacc += unit_{i}_step(acc);\n" for i in range(files))
    (root / "src" / "main.c").write_text(f'#include <stdio.h>\n#include "common.h"\n\nint main(void)\n{{\n'
                                         f'\tint acc = 1;\n\n{calls}\tprintf("%d\\n", acc);\n\treturn 0;\n}}\n')
    fixed = files // 2
    patch = root.parent / "fix.patch"
    line = f"\t\tacc += table_{fixed}[k] % {1000 + fixed};"
    patch.write_text(f"--- a/src/unit{fixed:03d}.c\n+++ b/src/unit{fixed:03d}.c\n@@ -16,7 +16,7 @@\n"
                     f" \tfor (int k = 0; k < 64; k++) {{\n \t\ttable_{fixed}[k] = mix_{fixed}(x + k);\n"
                     f"-{line}\n+{line.replace(str(1000 + fixed), str(2000 + fixed))}\n \t}}\n"
                     f" \treturn acc + unit_{fixed}_name()[0];\n }}\n \n")
    return patch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="build-bench-") as tmp:
        src = Path(tmp) / "prog"
        patch = make_fixture(src, args.files)
        start = time.monotonic()
        result = build_user_patch(BuildOptions(patches=[patch], srcdir=src, targets=["prog"], outdir=Path(tmp),
                                               jobs=args.jobs))
        total = time.monotonic() - start
    t = result.timings
    builds = t.get("original build", 0) + t.get("patched build", 0)
    print(f"patch-build, {args.files} source files, one-line fix, -j{args.jobs}: "
          f"{len(result.functions)} function(s) replaced ({', '.join(result.functions)})")
    for step in ("copy", "original build", "patched build", "diff", "link", "report"):
        print(f"  {step:<16} {t.get(step, 0):8.3f} s")
    other = total - builds
    print(f"  {'total':<16} {total:8.3f} s")
    print(f"  everything but the two builds: {other:.3f} s = {100 * other / total:.1f}% of the total (target < 10%)")


if __name__ == "__main__":
    main()
