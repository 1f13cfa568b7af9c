"""The packages depend on each other one way (README.md, "Layout"): every import of the project's own code,
read from the sources with `ast` (function-level imports too), points to the importer's own package or to a
lower layer; the console scripts' modules sit on top of everything. ELF is read through elfcore: no other
package imports an ELF library (pyelftools, LIEF)."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# lowest first; packages of one layer do not import each other
LAYERS = [
    {"common", "templates"},  # errors and exit codes, bounded input, signals, build commands; template files
    {"elfcore"},  # ELF
    {"patchformat"},  # the patch formats
    {"diffobj"},  # the differ
    {"linker", "report"},
    {"loader"},
    {"kbuild"},  # the build driver (it keeps modules in the loader's store)
    {"cli"},  # the console scripts' modules, whatever package holds them
]
CLI_MODULES = {"diffobj.entry", "diffobj.console"}  # the console scripts' shared entry point and output


def _layer(module: str) -> int:
    package, _, rest = module.partition(".")
    if module in CLI_MODULES or rest.split(".")[-1] in ("cli", "__main__"):
        package = "cli"
    return next(i for i, layer in enumerate(LAYERS) if package in layer)


PACKAGES = set().union(*LAYERS) - {"cli"}
NAMESPACE = "patch_build."


def _imports() -> list[tuple[str, str]]:
    """(importer, imported) module names of every import in the project's packages."""
    edges = []
    for package in sorted(PACKAGES):
        for path in sorted((REPO / package).rglob("*.py")):
            module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                edges += [(module, name) for name in names]
    return edges


def test_imports_name_the_namespace():
    """A package imported by its folder's name (`import report`) works from the checkout only."""
    bare = sorted(f"{a} imports {b}" for a, b in _imports() if b.partition(".")[0] in PACKAGES)
    assert bare == []


def _project_imports() -> list[tuple[str, str]]:
    """Imports of the project's own modules, by their folder's name (installed, they live under patch_build.*)."""
    inside = [(a, b.removeprefix(NAMESPACE)) for a, b in _imports() if b.startswith(NAMESPACE)]
    return [(a, b) for a, b in inside if b.partition(".")[0] in PACKAGES]


def test_imports_point_down():
    edges = _project_imports()
    assert len(edges) > 100  # the walk saw the code
    upward = sorted(f"{a} imports {b}" for a, b in edges if _layer(a) < _layer(b) or (
        _layer(a) == _layer(b) < len(LAYERS) - 1 and a.partition(".")[0] != b.partition(".")[0]))
    assert upward == []


def test_the_layers():
    """The check itself: what the layering forbids (the linker running kbuild's build, a pass printing through
    a command's console) lies above its importer."""
    assert _layer("linker.kernel") < _layer("kbuild.build") and _layer("diffobj.diff") < _layer("diffobj.console")
    assert _layer("elfcore.read") < _layer("diffobj.read") < _layer("report.collect") < _layer("kbuild.units")
    assert _layer("diffobj.cli") == _layer("loader.__main__") == len(LAYERS) - 1


def test_elf_read_through_elfcore():
    users = [(a, b) for a, b in _imports() if b.partition(".")[0] in ("elftools", "lief")]
    assert any(a.startswith("elfcore.") for a, _ in users)  # the walk saw elfcore's own
    assert sorted(f"{a} imports {b}" for a, b in users if not a.startswith("elfcore.")) == []
