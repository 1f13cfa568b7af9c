"""The deployed-binary check compares the data the replaced functions and their callees reference, not only their
instructions: a build that embeds its time (`__DATE__ __TIME__`, here fixed by SOURCE_DATE_EPOCH) has other
strings in the deployed binary than in the scratch rebuild."""
from __future__ import annotations

import json
import os
import subprocess

from buildenv import assert_one_line_error, build_id

from patch_build.patchformat.module import read_module

SOURCE = r"""#include <stdio.h>
#include <stdlib.h>

static __attribute__((noipa)) const char *stamp(void)
{
	return "built " __DATE__ " " __TIME__;
}

__attribute__((noipa)) void banner(void)
{
	printf("server 1.0, %s\n", stamp());
}

__attribute__((noipa)) int answer(int x)
{
	return x > 1000 ? 0 : x + 1;
}

int main(int argc, char **argv)
{
	banner();
	printf("%d\n", answer(argc > 1 ? atoi(argv[1]) : 41));
	return 0;
}
"""
MAKEFILE = "CFLAGS ?= -O2 -g\nserver: stamp.o\n\t$(CC) $(CFLAGS) -o $@ stamp.o\n"
BANNER_PATCH = """--- a/stamp.c
+++ b/stamp.c
@@ -9,7 +9,7 @@
 
 __attribute__((noipa)) void banner(void)
 {
-	printf("server 1.0, %s\\n", stamp());
+	printf("server 1.0.1, %s\\n", stamp());
 }
 
 __attribute__((noipa)) int answer(int x)
"""
ANSWER_PATCH = """--- a/stamp.c
+++ b/stamp.c
@@ -15,7 +15,7 @@
 
 __attribute__((noipa)) int answer(int x)
 {
-	return x > 1000 ? 0 : x + 1;
+	return x > 1000 ? 0 : x + 2;
 }
 
 int main(int argc, char **argv)
"""
STAMP_PATCH = """--- a/stamp.c
+++ b/stamp.c
@@ -3,7 +3,7 @@
 
 static __attribute__((noipa)) const char *stamp(void)
 {
-	return "built " __DATE__ " " __TIME__;
+	return "built on " __DATE__ " at " __TIME__;
 }
 
 __attribute__((noipa)) void banner(void)
"""
DEPLOYED_EPOCH = "1000000000"  # Sep  9 2001 01:46:40
LATER_EPOCH = "1700000000"  # the scratch builds, original and patched alike (else stamp() changes between them)


def _setup(tmp_path, build_epoch: str, monkeypatch):
    """SRCDIR, the deployed server (built at DEPLOYED_EPOCH), the patches; patch-build's own builds run at
    `build_epoch`."""
    src, deployed = tmp_path / "src", tmp_path / "deployed"
    for tree in (src, deployed):
        tree.mkdir()
        (tree / "stamp.c").write_text(SOURCE)
        (tree / "Makefile").write_text(MAKEFILE)
    subprocess.run(["make", "-s"], cwd=deployed, check=True, capture_output=True,
                   env=dict(os.environ, SOURCE_DATE_EPOCH=DEPLOYED_EPOCH))
    (tmp_path / "banner.patch").write_text(BANNER_PATCH)
    (tmp_path / "answer.patch").write_text(ANSWER_PATCH)
    (tmp_path / "stamp.patch").write_text(STAMP_PATCH)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", build_epoch)
    return src, deployed / "server"


def test_other_build_time_refused_by_name(patch_build, tmp_path, monkeypatch):
    # banner() is unchanged in its instructions but calls stamp(), whose string is another in the deployed server.
    src, server = _setup(tmp_path, LATER_EPOCH, monkeypatch)
    run = patch_build("-s", src, "-t", "server", "--target-binary", server, "-o", tmp_path / "out",
                      tmp_path / "banner.patch")
    assert_one_line_error(run, 1, "deployed binary", "stamp (used by banner", '"built Sep  9 2001 01:46:40" deployed')
    assert not (tmp_path / "out" / "banner.kpatch").exists()
    report = json.loads((tmp_path / "out" / "banner.report.json").read_text())
    assert report["status"] == "refused"
    assert "stamp" in {p["symbol"] for o in report["objects"] for p in o["rejected"]}


def test_changed_function_using_other_build_time_refused_by_name(patch_build, tmp_path, monkeypatch):
    src, server = _setup(tmp_path, LATER_EPOCH, monkeypatch)
    run = patch_build("-s", src, "-t", "server", "--target-binary", server, "-o", tmp_path / "out",
                      tmp_path / "stamp.patch")
    assert_one_line_error(run, 1, "deployed binary",
                          'server: stamp (+0x0: lea uses "built Nov 14 2023 22:13:20" built, '
                          '"built Sep  9 2001 01:46:40" deployed)')
    assert not (tmp_path / "out" / "stamp.kpatch").exists()


def test_same_build_time_builds(patch_build, tmp_path, monkeypatch):
    src, server = _setup(tmp_path, DEPLOYED_EPOCH, monkeypatch)
    run = patch_build("-s", src, "-t", "server", "--target-binary", server, "-o", tmp_path / "out",
                      tmp_path / "banner.patch")
    assert run.returncode == 0, run.stderr
    info = read_module(tmp_path / "out" / "banner.kpatch")
    assert [f.name for f in info.funcs] == ["banner"]
    assert [(t.name, t.build_id) for t in info.targets] == [("server", build_id(server))]


def test_other_build_time_not_used_by_the_patch_builds(patch_build, tmp_path, monkeypatch):
    # answer() uses nothing that differs: the deployed server runs the code the patch was built against.
    src, server = _setup(tmp_path, LATER_EPOCH, monkeypatch)
    run = patch_build("-s", src, "-t", "server", "--target-binary", server, "-o", tmp_path / "out",
                      tmp_path / "answer.patch")
    assert run.returncode == 0, run.stderr
    assert [f.name for f in read_module(tmp_path / "out" / "answer.kpatch").funcs] == ["answer"]
