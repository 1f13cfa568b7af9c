"""NAME.gopatch: a live fix for a Go program, as patch-build writes it and patch-ctl reads it.

An uncompressed tar (reproducible: fixed order, times and owners) of two members: `gopatch.json`, the
metadata below, and `plugin.so`, the Go plugin holding the patched package's copy. The metadata records
the plugin's SHA-256, checked on every read.

    format       1
    name         the patch's name (NAME)
    target       {"name", "build_id", "go_version"}: the deployed program it was built for
    pluginpath   the plugin's path (the derived import path of its main package)
    plugin_sha256
    funcs        [{"name": the program's function, "new": the plugin's function that replaces it}]
    binds        [{"copy": a plugin function, "host": the program's function it is bound back to}]
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import asdict, dataclass, field

FORMAT = 1
META, PLUGIN = "gopatch.json", "plugin.so"
MAX_META = 16 << 20
MAX_PLUGIN = 512 << 20
SUFFIX = ".gopatch"


class BadGoPatch(Exception):
    """The file is not a well-formed .gopatch; the message names it and says why."""


@dataclass(frozen=True)
class GoFunc:
    name: str
    new: str


@dataclass(frozen=True)
class GoBind:
    copy: str
    host: str


@dataclass
class GoPatch:
    name: str
    target: dict
    pluginpath: str
    plugin_sha256: str = ""
    funcs: list[GoFunc] = field(default_factory=list)
    binds: list[GoBind] = field(default_factory=list)
    format: int = FORMAT

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode() + b"\n"


def write_gopatch(path: str | os.PathLike, patch: GoPatch, plugin: bytes) -> None:
    patch.plugin_sha256 = hashlib.sha256(plugin).hexdigest()
    tmp = f"{os.fspath(path)}.tmp"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in ((META, patch.to_json()), (PLUGIN, plugin)):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, path)


def read_gopatch(path: str | os.PathLike) -> tuple[GoPatch, bytes]:
    """(metadata, plugin bytes); BadGoPatch when the file is not one of ours or was changed."""
    name = os.fspath(path)
    try:
        if not os.path.isfile(name):
            raise BadGoPatch(f"{name}: not a regular file")
        if os.path.getsize(name) > MAX_META + MAX_PLUGIN + (1 << 20):
            raise BadGoPatch(f"{name}: too large for a .gopatch")
        members = {}
        with tarfile.open(name, "r:") as tar:
            for info in tar:
                limit = {META: MAX_META, PLUGIN: MAX_PLUGIN}.get(info.name)
                if limit is None or not info.isfile() or info.size > limit or info.name in members:
                    raise BadGoPatch(f"{name}: unexpected member {info.name!r}")
                members[info.name] = tar.extractfile(info).read(limit)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise BadGoPatch(f"{name}: not a .gopatch ({e})") from None
    if set(members) != {META, PLUGIN}:
        raise BadGoPatch(f"{name}: not a .gopatch (needs {META} and {PLUGIN})")
    try:
        raw = json.loads(members[META])
        if raw.get("format") != FORMAT:
            raise BadGoPatch(f"{name}: .gopatch format {raw.get('format')!r} (this tool reads {FORMAT})")
        raw["funcs"] = [GoFunc(**f) for f in raw["funcs"]]
        raw["binds"] = [GoBind(**b) for b in raw["binds"]]
        patch = GoPatch(**raw)
        if not all(isinstance(v, str) for v in (patch.name, patch.pluginpath, patch.plugin_sha256)) or \
                not isinstance(patch.target, dict):
            raise TypeError("wrong field types")
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise BadGoPatch(f"{name}: malformed {META} ({e})") from None
    if hashlib.sha256(members[PLUGIN]).hexdigest() != patch.plugin_sha256:
        raise BadGoPatch(f"{name}: the plugin's SHA-256 does not match the one recorded (changed after its build)")
    return patch, members[PLUGIN]
