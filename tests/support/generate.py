"""Generated compilation units with many functions, for the large-object test and the benchmark."""
from __future__ import annotations


def many_functions(count: int, changed: int | None = None) -> str:
    """C source with COUNT functions f0..f{COUNT-1}; function CHANGED (if any) computes something else.

    Each function is big enough to redirect (a call with two arguments) and distinct, so the compiler
    neither folds nor merges them.
    """
    lines = ["extern int sink(int value, int tag);", "int shared_total;", ""]
    for i in range(count):
        tag = i + 1 if i == changed else i
        lines.append(f"int f{i}(int x)\n{{\n\tshared_total += x;\n\treturn sink(x ^ {i}, {tag});\n}}\n")
    return "\n".join(lines)
