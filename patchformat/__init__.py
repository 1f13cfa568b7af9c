"""The patch formats that the differ, the linker, the loader, the reports and the tests meet at (docs/design.md):
the `.kpatch.funcs` record and the module's sections (`sections`), the names of references to the running
original (`names`), a user-space module's integrity record (`integrity`) and its reader (`module`). Each fact
is written here once; below it lie only `common` and `elfcore`.
"""
