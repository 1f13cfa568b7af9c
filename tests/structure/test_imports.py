"""The packages depend on each other one way (README.md, "Layout"): every import of the project's own code,
read from the sources with `ast` (function-level imports too), points to the importer's own package or to a
lower layer; the console scripts' modules sit on top of everything. ELF is read through elfcore: no other
package imports an ELF library (pyelftools, LIEF). Inside kbuild, only the CLI picks a builder, and one module
shapes the build reports. Relocation types are named, never numbers."""
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


# kbuild's builders, one per kind of target: only the CLI chooses among them; what they share lives below them
BUILDERS = {"kbuild.kernel", "kbuild.userspace", "kbuild.golang"}
# Modules of kbuild that make reports from report/'s model, and why
REPORT_SHAPERS = {
    "kbuild.buildreport": "the user-space and kernel builds' reports",
    "kbuild.golang": "a Go build's units are packages, diffed from the Go toolchain's listings, not objects",
}


def test_only_the_cli_picks_a_builder():
    """A builder borrowing from another (kbuild.kernel used kbuild.userspace's module_name) ties them together."""
    edges = _project_imports()
    assert any(b in BUILDERS for _, b in edges)  # the walk saw the dispatch
    assert sorted(f"{a} imports {b}" for a, b in edges if b in BUILDERS and _layer(a) < len(LAYERS) - 1) == []


def test_build_reports_are_shaped_in_one_place():
    shapers = {a for a, b in _project_imports() if a.startswith("kbuild.")
               and b in ("report.build", "report.collect", "report.model")}
    assert shapers == set(REPORT_SHAPERS)


def test_loader_reads_modules_through_the_patch_formats():
    """patch-ctl's work in a process stands on the base alone: modules are read through patchformat, ELF through
    elfcore, never through the differ or the linker (issue 11: the loader read modules through diffobj.read and
    linker.module)."""
    used = {b.partition(".")[0] for a, b in _project_imports()
            if a.startswith("loader.") and _layer(a) < len(LAYERS) - 1}
    assert used and used <= {"common", "elfcore", "patchformat", "loader"}, used


def _is_int(node: ast.AST) -> bool:
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return bool(node.elts) and all(map(_is_int, node.elts))
    return isinstance(node, ast.Constant) and type(node.value) is int


def _is_relocation_type(node: ast.AST) -> bool:
    name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else ""
    return name in ("rtype", "r_type", "reloc_type") or (isinstance(node, ast.Attribute) and name == "type" and
                                                         isinstance(node.value, ast.Name) and
                                                         node.value.id in ("r", "rel", "rela", "reloc"))


def test_relocation_types_are_named():
    """Relocation types are defined once, in elfcore.x86_64's table, and named everywhere else, tests too:
    no `R_X86_64_...  = 1` of its own, no `rtype == 3` or `r.type in (9, 41, 42)`."""
    found = []
    for path in sorted(REPO.rglob("*.py")):
        relative = path.relative_to(REPO)
        if relative.parts[0] not in PACKAGES | {"tests", "bench", "scripts"} or relative == Path("elfcore/x86_64.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Assign) and _is_int(node.value) and any(
                    isinstance(t, ast.Name) and t.id.startswith("R_X86_64_") for t in node.targets):
                found.append(f"{relative}:{node.lineno} defines {node.targets[0].id}")
            elif isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                if any(map(_is_relocation_type, sides)) and any(map(_is_int, sides)):
                    found.append(f"{relative}:{node.lineno} compares a relocation type with a number")
    assert found == []


def test_build_id_is_read_in_one_place():
    """The GNU build-id is read by elfcore.notes only (it was read in four places, patchformat.gobinary too)."""
    readers = sorted(str(path.relative_to(REPO)) for package in sorted(PACKAGES - {"elfcore"})
                     for path in sorted((REPO / package).rglob("*.py")) if "NT_GNU_BUILD_ID" in path.read_text())
    assert readers == []
