"""Architecture-specific facts of the differ, one module per arch. Only x86-64 is supported for now."""
