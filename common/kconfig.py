"""The configuration of a kernel build tree or headers package: its `include/config/auto.conf`, which kbuild
reads for every build against it (CONFIG_NAME=value lines; an option that is off is absent)."""
from __future__ import annotations

import re
from pathlib import Path

AUTO_CONF_MAX = 1 << 22  # bytes read (Debian's is about 300 KiB)


def auto_conf(tree: Path) -> dict[str, str]:
    """{CONFIG_NAME: value, quotes removed} of `tree`'s auto.conf; empty when it has none."""
    try:
        with open(tree / "include" / "config" / "auto.conf", errors="replace") as f:
            text = f.read(AUTO_CONF_MAX)
    except OSError:
        return {}
    return {m.group(1): m.group(2).strip('"') for m in re.finditer(r"^(CONFIG_\w+)=(.*)$", text, re.M)}
