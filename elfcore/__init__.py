"""The project's one reader of ELF, objects and linked binaries alike; every other package reads ELF through it.

One concept per module, as pyelftools arranges its own: `constants` (the gABI's numbers), `structs` (the ELF64
little-endian record layouts), `headers` (the file and section headers, checked), `model` and `read` (a
relocatable object's sections, symbols and relocations), `symbols` (a linked binary's symbol tables), `notes`
(the GNU build-id), `ehframe` (the records of `.eh_frame`) and `x86_64` (the architecture: one row per
relocation type with its size, formula, relaxations and display; the instruction encodings shared by the
differ and the loader). pyelftools and `struct` underneath; LIEF is not used here.
"""
