"""The ELF gABI's numbers (and the GNU and x86-64 psABI extensions the project meets), by their standard names."""

# e_ident
ELFMAG = b"\x7fELF"
ELFCLASS64, ELFDATA2LSB = 2, 1
EI_CLASS, EI_DATA = 4, 5
# e_type
ET_REL, ET_EXEC, ET_DYN, ET_CORE = 1, 2, 3, 4
# e_machine
EM_X86_64 = 62

# sh_type
SHT_NULL, SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_RELA, SHT_NOBITS, SHT_REL, SHT_GROUP = 0, 1, 2, 3, 4, 8, 9, 17
SHT_X86_64_UNWIND = 0x70000001  # how gcc types .eh_frame in objects (ld -r makes it PROGBITS)
# sh_flags
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR, SHF_MERGE, SHF_STRINGS = 0x1, 0x2, 0x4, 0x10, 0x20
SHF_INFO_LINK, SHF_GROUP, SHF_TLS, SHF_COMPRESSED = 0x40, 0x200, 0x400, 0x800
SHF_RELA_LIVEPATCH = 0x00100000  # the kernel's: a .klp.rela.* section the livepatch core applies
# Sections that describe other sections rather than hold code or data.
BOOKKEEPING_TYPES = (SHT_NULL, SHT_SYMTAB, SHT_STRTAB, SHT_RELA, SHT_REL, SHT_GROUP)

# special section indices
SHN_UNDEF, SHN_LORESERVE, SHN_LIVEPATCH, SHN_ABS, SHN_COMMON = 0, 0xFF00, 0xFF20, 0xFFF1, 0xFFF2
MAX_SECTIONS = SHN_LORESERVE  # 65,280: from there on, ELF moves the count to section 0 (SHN_XINDEX numbering)

# st_info: type (low 4 bits) and binding (high 4 bits)
STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION, STT_FILE, STT_COMMON, STT_TLS, STT_GNU_IFUNC = 0, 1, 2, 3, 4, 5, 6, 10
STB_LOCAL, STB_GLOBAL, STB_WEAK, STB_GNU_UNIQUE = 0, 1, 2, 10
# .gnu.version entries: a symbol of a non-default version (memcpy@GLIBC_2.2.5)
VERSYM_HIDDEN = 0x8000
