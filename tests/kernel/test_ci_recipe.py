"""docs/ci.md's kernel job, run as written: its shell steps (fetch the -dbg vmlinux, headers and sources;
build the signed livepatch; rebuild and compare) in a scratch workspace, with the variables a GitHub runner
sets, a throw-away signing key as the secrets, and the livepatch-patches of the job's checkout.

Only the YAML runner is not exercised: `uses:` steps (checkout, cache, upload) are done by the test (the
checkout) or checked by what the job leaves where they read it (the artifact's files).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from test_build import SIGNING_CONFIG

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures" / "kernel"
SHA = "0123456789abcdef0123456789abcdef01234567"
EXPRESSION = re.compile(r"\$\{\{\s*([^}]+?)\s*\}\}")


def _kernel_job() -> dict:
    text = (ROOT / "docs" / "ci.md").read_text()
    section = text.split("## A worked GitHub Actions job (kernel)", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    return yaml.safe_load(block)


def _evaluate(expression: str, context: dict[str, str]) -> str:
    """The few expressions the job uses; another one fails the test (the recipe changed: teach it here)."""
    assert expression in context, f"docs/ci.md uses ${{{{ {expression} }}}}, unknown to this test"
    return context[expression]


def _outputs(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def test_kernel_job_commands(kenv, tmp_path):
    workflow = _kernel_job()
    [job] = workflow["jobs"].values()
    steps = {s["name"]: s for s in job["steps"] if "name" in s}
    assert {"Cache the kernel's packages", "Upload the module and its reports"} <= set(steps)
    assert steps["Cache the kernel's packages"]["with"]["path"] == "kcache"

    # The checkout step: the patches to ship, under head/.
    work = tmp_path / "work"
    (work / "head" / "kernel-livepatches").mkdir(parents=True)
    shutil.copy(FIXTURES / "cmdline-prefix.patch", work / "head" / "kernel-livepatches" / "0001-cmdline.patch")

    # Repository secrets: a throw-away key and self-signed certificate.
    (tmp_path / "x509.genkey").write_text(SIGNING_CONFIG)
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-new", "-nodes", "-utf8", "-sha256", "-days", "3650", "-batch", "-x509",
                    "-config", tmp_path / "x509.genkey", "-outform", "PEM", "-out", cert, "-keyout", key],
                   check=True, capture_output=True)
    runner_temp = tmp_path / "runner-temp"
    runner_temp.mkdir()
    github_output, summary = tmp_path / "github_output", tmp_path / "step_summary"
    github_output.touch()
    summary.touch()
    context = {"inputs.kernel || '6.1.0-57-amd64'": kenv.release,
               "secrets.MODULE_SIGNING_KEY": key.read_text(), "secrets.MODULE_SIGNING_CERT": cert.read_text()}
    env = dict(os.environ, GITHUB_SHA=SHA, GITHUB_OUTPUT=os.fspath(github_output),
               GITHUB_STEP_SUMMARY=os.fspath(summary), RUNNER_TEMP=os.fspath(runner_temp))
    env.update({k: EXPRESSION.sub(lambda m: _evaluate(m.group(1), context), str(v))
                for k, v in workflow["env"].items()})
    assert env["KREL"] == kenv.release

    for name in ("Fetch the kernel's symbols, headers and sources", "Build the live patch",
                 "Check the build is reproducible"):
        step = steps[name]
        context.update({f"steps.build.outputs.{k}": v for k, v in _outputs(github_output).items()})
        if "if" in step:
            assert step["if"] == "steps.build.outputs.status == 'built'"
            assert context["steps.build.outputs.status"] == "built"
        step_env = dict(env, **{k: EXPRESSION.sub(lambda m: _evaluate(m.group(1), context), str(v))
                                for k, v in step.get("env", {}).items()})
        script = EXPRESSION.sub(lambda m: _evaluate(m.group(1), context), step["run"])
        shell = ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c"] if step.get("shell") == "bash" \
            else ["sh", "-e", "-c"]
        proc = subprocess.run([*shell, script], cwd=work, env=step_env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, f"step {name!r} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n" \
                                     f"{proc.stderr[-3000:]}"

    # The cache keeps the vmlinux only (not the 860 MB package) and the packages apt fetched.
    cached = work / "kcache"
    assert (cached / f"vmlinux-{kenv.release}").stat().st_size > 100 << 20
    assert not list(cached.glob("*.deb"))
    assert (cached / f"vmlinux-{kenv.release}").read_bytes()[:4] == b"\x7fELF"

    # What the upload step collects: the signed module, the reports, the summary line, the build log.
    name = f"livepatch_{SHA[:8]}"
    out = work / "out"
    for artifact in (f"{name}.ko", f"{name}.report.json", f"{name}.report.md", f"{name}.report.html",
                     "summary.json", "build.log"):
        assert (out / artifact).is_file(), artifact
    summary_line = json.loads((out / "summary.json").read_text())
    assert (summary_line["status"], summary_line["name"]) == ("built", name)
    report = json.loads((out / f"{name}.report.json").read_text())
    assert report["details"]["module signature"].startswith("sha256, signed by patch-build test signing key")
    assert [t["kernel_release"] for t in report["targets"]] == [kenv.release]
    signer = subprocess.run(["modinfo", "-F", "signer", out / f"{name}.ko"], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert signer == "patch-build test signing key"
    assert summary.read_text() == (out / f"{name}.report.md").read_text()
    assert "cmdline_proc_show" in summary.read_text()
    assert not (runner_temp / "signing_key.pem").exists(), "the key stays on the runner after the build"
