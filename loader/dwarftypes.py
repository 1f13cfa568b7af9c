"""Global and static variables of a linked object from its DWARF: name, scope, link-time address and type.

A variable is a DW_TAG_variable with a DW_OP_addr location (thread-locals and optimised-out ones have none).
C++ definitions outside their namespace or class point at the declaration (DW_AT_specification), whose
parents give the qualified name; statics inside functions are named `function::name`. Only namespaces,
functions and blocks are walked: variables never hide inside type definitions (their static members are
defined at the top), and skipping the standard library's types keeps a C++ unit fast to read.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from patch_build.elfcore.dwarf import base_type_encodings, expression_parser

_WALKED = ("DW_TAG_namespace", "DW_TAG_subprogram", "DW_TAG_lexical_block")
_SCOPES = {"DW_TAG_namespace", "DW_TAG_subprogram", "DW_TAG_structure_type", "DW_TAG_class_type",
           "DW_TAG_union_type"}
_SIGNED = {"DW_ATE_signed", "DW_ATE_signed_char"}
_INTEGER = _SIGNED | {"DW_ATE_unsigned", "DW_ATE_unsigned_char", "DW_ATE_UTF"}
_CHAR = {"DW_ATE_signed_char", "DW_ATE_unsigned_char"}
_TYPE_DEPTH = 16  # qualifiers and typedefs followed before a type is called unknown

# kinds of type patch-ctl reads and writes
INT, BOOL, ENUM, FLOAT, CHARS, CSTRING, STDSTRING, OTHER = (
    "int", "bool", "enum", "float", "char[]", "char *", "std::string", "other")


@dataclass
class VarType:
    kind: str
    size: int
    name: str  # as a declaration would spell it: "const unsigned int", "char[16]", "enum color"
    signed: bool = False
    const: bool = False
    enumerators: dict[str, int] = field(default_factory=dict)


@dataclass
class Variable:
    name: str  # as declared: "counter"
    qualified: str  # with its namespaces, class or function: "app::cfg::scale", "next_id::calls"
    file: str  # the source file that defines it (its unit's, or its declaration's for a static in a header)
    address: int  # link-time
    type: VarType
    static: bool  # internal linkage (no DW_AT_external)
    symbol: str  # its symbol's name: the linkage name in C++, else the name


def _name(die) -> str:
    attr = die.attributes.get("DW_AT_name")
    return attr.value.decode("utf-8", "replace") if attr else ""


def _origin(die):
    """The DIE that carries the name and the declaration's place: the declaration a C++ definition points
    to, or the abstract instance of an inlined or cloned function."""
    for attr in ("DW_AT_specification", "DW_AT_abstract_origin"):
        if attr in die.attributes:
            return die.get_DIE_from_attribute(attr)
    return die


def _scope(die) -> list[str]:
    parts = []
    parent = die.get_parent()
    while parent is not None and parent.tag != "DW_TAG_compile_unit":
        if parent.tag in _SCOPES:
            named = _origin(parent)
            parts.append(_name(named) or ("(anonymous namespace)" if parent.tag == "DW_TAG_namespace" else "?"))
            parent = named.get_parent() if named is not parent else parent.get_parent()
        else:
            parent = parent.get_parent()
    return list(reversed(parts))


def _address(die, parser) -> int | None:
    loc = die.attributes.get("DW_AT_location")
    if loc is None or loc.form != "DW_FORM_exprloc":
        return None
    ops = parser.parse_expr(loc.value)
    if len(ops) == 1 and ops[0].op_name == "DW_OP_addr":
        return ops[0].args[0]
    return None  # thread-local (DW_OP_form_tls_address) or computed: not a plain global


def _array_length(die) -> int | None:
    for sub in die.iter_children():
        if sub.tag == "DW_TAG_subrange_type":
            if "DW_AT_count" in sub.attributes:
                return sub.attributes["DW_AT_count"].value
            if "DW_AT_upper_bound" in sub.attributes:
                return sub.attributes["DW_AT_upper_bound"].value + 1
            return None
    return None


def _is_std_string(die) -> bool:
    return _name(die).startswith("basic_string<char,") and _scope(die)[:1] == ["std"]


def describe(die) -> VarType:
    """The type a variable's DW_AT_type points to, qualifiers and typedefs seen through."""
    const, spelled = False, ""
    for _ in range(_TYPE_DEPTH):
        if die is None:
            return VarType(OTHER, 0, "void")
        tag = die.tag
        if tag == "DW_TAG_const_type":
            const = True
        elif tag == "DW_TAG_typedef":
            spelled = spelled or _name(die)
        elif tag not in ("DW_TAG_volatile_type", "DW_TAG_restrict_type", "DW_TAG_atomic_type"):
            break
        die = die.get_DIE_from_attribute("DW_AT_type") if "DW_AT_type" in die.attributes else None
    else:
        return VarType(OTHER, 0, "?", const=const)
    prefix = "const " if const else ""
    size = die.attributes["DW_AT_byte_size"].value if "DW_AT_byte_size" in die.attributes else 0
    tag, name = die.tag, _name(die)
    if tag == "DW_TAG_base_type":
        ate = base_type_encodings().get(die.attributes["DW_AT_encoding"].value, "")
        kind = BOOL if ate == "DW_ATE_boolean" else FLOAT if ate == "DW_ATE_float" else INT if ate in _INTEGER else OTHER
        return VarType(kind, size, prefix + (spelled or name), signed=ate in _SIGNED, const=const)
    if tag == "DW_TAG_enumeration_type":
        values = {_name(e): e.attributes["DW_AT_const_value"].value
                  for e in die.iter_children() if e.tag == "DW_TAG_enumerator"}
        under = describe(die.get_DIE_from_attribute("DW_AT_type")) if "DW_AT_type" in die.attributes else None
        signed = under.signed if under else any(v < 0 for v in values.values())
        return VarType(ENUM, size, prefix + (spelled or f"enum {name}"), signed=signed, const=const,
                       enumerators=values)
    if tag == "DW_TAG_array_type":
        element = describe(die.get_DIE_from_attribute("DW_AT_type"))
        length = _array_length(die)
        if element.kind == INT and element.size == 1 and element.name.split()[-1] == "char" and length:
            return VarType(CHARS, length, f"{element.name}[{length}]", const=const or element.const)
        return VarType(OTHER, (length or 0) * element.size, f"{element.name}[{length or ''}]", const=const)
    if tag == "DW_TAG_pointer_type":
        target = describe(die.get_DIE_from_attribute("DW_AT_type")) if "DW_AT_type" in die.attributes else None
        pointee = target.name if target else "void"
        if target and target.kind == INT and target.size == 1 and pointee.split()[-1] == "char":
            return VarType(CSTRING, size or 8, f"{pointee} *{' const' if const else ''}", const=const)
        return VarType(OTHER, size or 8, f"{pointee} *", const=const)
    if tag in ("DW_TAG_reference_type", "DW_TAG_rvalue_reference_type"):
        target = describe(die.get_DIE_from_attribute("DW_AT_type")) if "DW_AT_type" in die.attributes else None
        return VarType(OTHER, size or 8, f"{target.name if target else 'void'} &")
    if tag in ("DW_TAG_structure_type", "DW_TAG_class_type") and _is_std_string(die):
        return VarType(STDSTRING, size, prefix + "std::string", const=const)
    return VarType(OTHER, size, prefix + (spelled or name or tag.removeprefix("DW_TAG_")), const=const)


def _walk(die, parser, unit: str, out: list[Variable]) -> None:
    for child in die.iter_children():
        if child.tag in _WALKED:
            _walk(child, parser, unit, out)
        elif child.tag == "DW_TAG_variable":
            address = _address(child, parser)
            if address is None:
                continue
            decl = _origin(child)
            name = _name(decl)
            if not name or "DW_AT_type" not in decl.attributes:
                continue
            qualified = "::".join(_scope(decl) + [name])
            static = "DW_AT_external" not in decl.attributes
            linkage = decl.attributes.get("DW_AT_linkage_name") or decl.attributes.get("DW_AT_MIPS_linkage_name")
            out.append(Variable(name, qualified, unit, address, describe(decl.get_DIE_from_attribute("DW_AT_type")),
                                static, linkage.value.decode("utf-8", "replace") if linkage else name))


def variables(dwarf) -> list[Variable]:
    """Every global and static variable an object's DWARF (`ElfFile.dwarf`) describes, by address; [] without
    DWARF (None)."""
    if dwarf is None:
        return []
    out: list[Variable] = []
    for cu in dwarf.iter_CUs():
        parser = expression_parser(cu)
        top = cu.get_top_DIE()
        _walk(top, parser, _name(top).rsplit("/", 1)[-1], out)
    seen, unique = set(), []
    for v in sorted(out, key=lambda v: (v.address, v.qualified)):
        if v.address not in seen:  # a static of an inlined function: the same one seen twice
            seen.add(v.address)
            unique.append(v)
    return unique
