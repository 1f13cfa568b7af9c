"""Test helpers shared by the test areas: real toolchain runs, ELF checks, the link shim."""
