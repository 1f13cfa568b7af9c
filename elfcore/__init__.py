"""The project's one reader of ELF, objects and linked binaries alike; every other package reads ELF through it,
and no other imports an ELF library (tests/structure/test_imports.py).

One concept per module, as pyelftools arranges its own: `constants` (the gABI's numbers), `structs` (the ELF64
little-endian record layouts, the section header as a named record), `headers` (the file and section headers,
checked), `model` and `read` (a relocatable object's sections, symbols and relocations), `symbols` (a linked
binary's symbol tables), `notes` (the GNU build-id), `segments` (a linked file's loadable segments), `sections` (one
section by name), `binary` (a linked binary read whole: contents by address), `elffile` (a linked file open for what
a loader asks of it: sections, dynamic entries, GOT slots, DWARF), `dwarf` (an object's DWARF, its debug relocations
applied), `ehframe` (the records of `.eh_frame`, their CFI rows) and `x86_64` (the architecture: one row per
relocation type with its size, formula, relaxations and display; the instruction encodings shared by the differ and
the loader) and `x86_64_lengths` (where each instruction ends, decoded without a disassembler). `struct` underneath
where speed matters, pyelftools for the rest (DWARF, call frame information, notes, dynamic entries); `parsing`
names what pyelftools raises on a malformed file. LIEF is not used.
"""
