"""Link a user-space patch module: `ld -r` of the differ's outputs and a generated metadata object."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import jinja2

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from patch_build.common.errors import PatchBuildError
from patch_build.patchformat import integrity
from patch_build.patchformat.module import Target
from patch_build.patchformat.sections import MODULE_VERSION


def _asm_string(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("patch_build.templates", "user"), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["asm_string"] = _asm_string
    return env


def render_metadata(name: str, targets: list[Target]) -> str:
    """The assembly source of the module's `.kpatch.module`, `.kpatch.targets`, their strings and the
    reserved `.kpatch.integrity` record."""
    return _environment().get_template("metadata.s.j2").render(name=name, targets=targets,
                                                                  version=MODULE_VERSION,
                                                                  integrity_size=integrity.RECORD_SIZE)


def _run(argv: list[str], what: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [l for l in (proc.stderr or proc.stdout).splitlines() if l.strip()]
        why = next((l for l in lines if "error" in l.lower() or "multiple definition" in l),
                   lines[-1] if lines else f"{argv[0]} exited {proc.returncode}")
        raise PatchBuildError(f"{what} failed: {why}")


def link_user_module(outputs: list[Path], name: str, targets: list[Target], module: Path, workdir: Path,
                     sign_key: Ed25519PrivateKey | None = None) -> Path:
    """Write `module` (NAME.kpatch) from the differ outputs, sealed with its digest (and signed with
    `sign_key`); `workdir` holds the intermediate metadata files."""
    source = workdir / f"{name}.kpatch-meta.s"
    meta = workdir / f"{name}.kpatch-meta.o"
    source.write_text(render_metadata(name, targets))
    _run(["as", "--64", "-o", os.fspath(meta), os.fspath(source)], "assembling the module metadata")
    module.parent.mkdir(parents=True, exist_ok=True)
    tmp = module.with_name(module.name + ".tmp")
    _run(["ld", "-r", "-o", os.fspath(tmp), *map(os.fspath, outputs), os.fspath(meta)], f"linking {module.name}")
    integrity.seal(tmp, sign_key)
    os.replace(tmp, module)
    return module
