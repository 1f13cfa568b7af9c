"""Architecture-specific facts, one module per arch. Only x86-64 is supported for now."""
from diffobj.arch import x86_64

ARCHES = {62: x86_64}  # by e_machine


def for_machine(e_machine: int):
    return ARCHES.get(e_machine)
