"""The patch formats that the differ, the linker, the loader, the reports and the tests meet at (docs/design.md):
the `.kpatch.funcs` record and the module's sections (`sections`), and the names of references to the
running original (`names`). Each fact is written here once; this package imports nothing of the project.
"""
