"""`patch-ctl`: apply, revert and list patches in running processes; show what a module holds."""
from __future__ import annotations

import dataclasses
import json
import signal
from pathlib import Path
from typing import Optional

import typer

from patch_build.common.messages import printable
from patch_build.diffobj.console import command_app, entry_point, error, guarded

PROG = "patch-ctl"
app = command_app("Apply, revert and list live patches in running user-space processes.", add_completion=True,
                  no_args_is_help=True)

PidOption = typer.Option(..., "-p", "--pid", help="The target process.")
TimeoutOption = typer.Option(10.0, "--timeout", help="Seconds to retry the consistency check.")


def _fail(message: str, code: int):
    error(PROG, message)
    raise typer.Exit(code)


def _guarded(fn):
    """Run a library call with one-line errors and the design's exit codes."""
    with guarded(PROG):
        return fn()


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def _say(line: str) -> None:
    """Print a line that holds names from a module or a target's memory: control characters escaped."""
    typer.echo(printable(line))


def _costs(stats) -> str:
    """What the target went through: every thread stopped (the longest such pause), all stops counted."""
    if not stats.attempts:  # only one thread at a time was stopped (`flags set`: a call run in the target)
        return f"{stats.stops} stop(s) of one thread, longest {_ms(stats.longest_stop)}; total {_ms(stats.elapsed)}"
    return (f"pause {_ms(stats.pause)} with every thread stopped, {stats.attempts} attempt(s); "
            f"{stats.stops} stop(s) in all, longest {_ms(stats.longest_stop)}; total {_ms(stats.elapsed)}")


def _warn(stats) -> None:
    for warning in stats.warnings:
        typer.echo(f"{PROG}: warning: {printable(warning)}", err=True)


def _late(stats, outcome: str) -> None:
    """A signal held during work that could not be stopped: reported now, with its exit code."""
    if stats.late_signal:
        name = signal.Signals(stats.late_signal).name
        _fail(f"interrupted by {name} after the point of no return: {outcome}", 128 + stats.late_signal)


@app.command()
def apply(module: Path = typer.Argument(..., help="NAME.kpatch, NAME.gopatch, or a hand-written patch library NAME.so"),
          pid: int = PidOption, timeout: float = TimeoutOption,
          no_stack_check: bool = typer.Option(False, "--no-stack-check",
                                              help="Do not require replaced functions to be off every stack."),
          trusted_keys: Optional[Path] = typer.Option(None, "--trusted-keys", metavar="DIR",
                                                      help="Only apply modules signed by a key of DIR/*.pem "
                                                           "(Ed25519 public keys).")):
    """Patch a running process (with a built NAME.kpatch or NAME.gopatch, or a hand-written patch library NAME.so)."""
    from patch_build.patchformat.integrity import load_trusted_keys
    from patch_build.loader.libraries import apply_library, is_shared_library
    from patch_build.loader.apply import apply_patch

    trusted = _guarded(lambda: load_trusted_keys(trusted_keys)) if trusted_keys is not None else None
    if module.name.endswith(".gopatch"):
        from patch_build.loader.golang import apply_gopatch
        if trusted is not None:
            _fail(f"{module.name}: a Go patch carries no signature (--trusted-keys given)", 1)
        record, stats = _guarded(lambda: apply_gopatch(pid, str(module), timeout))
    elif is_shared_library(str(module)):
        if trusted is not None:
            _fail(f"{module.name}: a hand-written patch library carries no signature (--trusted-keys given)", 1)
        record, stats = _guarded(lambda: apply_library(pid, str(module), timeout, not no_stack_check))
    else:
        record, stats = _guarded(lambda: apply_patch(pid, str(module), timeout, not no_stack_check, trusted))
    _warn(stats)
    _say(f"applied {record.module} to process {pid}: {len(record.funcs)} function(s) redirected ({_costs(stats)})")
    _late(stats, "the patch stays applied")


@app.command()
def revert(name: Optional[str] = typer.Argument(None, help="The patch (module name) to revert."),
           pid: int = PidOption, all_: bool = typer.Option(False, "--all", help="Revert every patch, newest first."),
           timeout: float = TimeoutOption):
    """Undo a patch (or all of them, newest first)."""
    from patch_build.loader.revert import revert_patches

    if (name is None) == (not all_):
        _fail("give a patch NAME or --all", 2)
    records, stats = _guarded(lambda: revert_patches(pid, None if all_ else name, timeout))
    _warn(stats)
    if not records:
        typer.echo(f"no patches in process {pid}")
    for r in records:
        _say(f"reverted {r.module} in process {pid}")
    if records:
        typer.echo(_costs(stats))
    _late(stats, "the revert is complete")


@app.command("list")
def list_(pid: int = PidOption, json_output: bool = typer.Option(False, "--json", help="Print JSON.")):
    """The patches applied in a process, newest last."""
    from patch_build.loader.revert import list_patches

    from patch_build.loader.variables import recorded_sets

    records, stats = _guarded(lambda: list_patches(pid))
    sets = _guarded(lambda: recorded_sets(pid))
    _warn(stats)
    if json_output:
        typer.echo(json.dumps({"pid": pid, "patches": [dataclasses.asdict(r) for r in records],
                               "variables": [dataclasses.asdict(v) for v in sets]}, indent=2))
        return
    if not records:
        typer.echo(f"no patches in process {pid}")
    for v in sets:
        typer.echo(f"variable {printable(v.name)} ({printable(v.type)}) in {printable(v.object)} at {v.address:#x}: "
                   f"{printable(v.old_text)} -> {printable(v.new_text)} [{v.state}]")
    for r in records:
        at = ", ".join(f"{start:#x} ({size} bytes)" for start, size in r.mappings)
        _say(f"{r.seq}. {r.module} [{r.state}] at {at} from {r.path}")
        if r.library:
            _say(f"   library {r.library}{' (loaded by it)' if r.handle else ''}")
        for f in r.funcs:
            on = f" (over {f.prev})" if f.prev else ""
            _say(f"   {f.objname}:{f.name} {f.old_addr:#x} -> {f.new_addr:#x} ({f.new_size} bytes){on}")
        for stage, hooks in r.hooks.items():
            _say(f"   hooks {stage}: {', '.join(name for name, _ in hooks)}")
        for eh_frame, _, _, confirmed in r.frames:
            typer.echo(f"   unwind information {'registered' if confirmed else 'perhaps registered'} at {eh_frame:#x}")


@app.command()
def info(module: Path = typer.Argument(..., help="NAME.kpatch"),
         json_output: bool = typer.Option(False, "--json", help="Print JSON.")):
    """What a patch module holds: targets, build-ids, functions and sizes, hooks, its digest and signer."""
    from patch_build.loader.patchmodule import module_info

    if module.name.endswith(".gopatch"):
        from patch_build.loader.golang import gopatch_info
        patch = _guarded(lambda: gopatch_info(str(module)))
        if json_output:
            typer.echo(json.dumps(dataclasses.asdict(patch), indent=2))
            return
        _say(f"go patch {patch.name} (format {patch.format}) {module}")
        typer.echo(f"plugin sha256:{patch.plugin_sha256} (verified)")
        t = patch.target
        _say(f"target {t.get('name')} build-id {t.get('build_id')} {t.get('go_version')}")
        for f in patch.funcs:
            _say(f"function {f.name} ({f.new})")
        return

    mod = _guarded(lambda: module_info(str(module)))
    if json_output:
        typer.echo(json.dumps(dataclasses.asdict(mod), indent=2))
    else:
        _say(f"module {mod.name} (format {mod.version}) {mod.path}")
        seal = mod.seal
        if seal.digest:
            typer.echo(f"digest sha256:{seal.digest} ({'verified' if seal.intact else 'DOES NOT MATCH the contents'})")
        if seal.signer:
            typer.echo(f"signed by {seal.signer} "
                       f"({'signature verified' if seal.signature_valid else 'signature DOES NOT VERIFY'})")
        elif seal.digest:
            typer.echo("unsigned")
        for t in mod.targets:
            _say(f"target {t.name} build-id {t.build_id}")
        for f in mod.funcs:
            pos = f",{f.sympos}" if f.sympos else ""
            _say(f"function {f.objname}:{f.name}{pos} {f.old_size} -> {f.new_size} bytes ({f.new_symbol})")
        for h in mod.hooks:
            _say(f"hook {h.stage} {h.function}")
        for p in mod.problems:
            _say(f"problem: {p}")
    if mod.problems:
        more = f" (and {len(mod.problems) - 1} more)" if len(mod.problems) > 1 else ""
        _fail(f"{module.name}: malformed patch module: {mod.problems[0]}{more}", 2)


@app.command("redirect")
def redirect_(old: str = typer.Argument(..., help="[OBJ:]FUNCTION of the program or of a library."),
              new: str = typer.Argument(..., help="[LIB:]FUNCTION of a loaded library (without LIB: the newest "
                                                  "library `lib load` loaded that has it)."),
              pid: int = PidOption, timeout: float = TimeoutOption,
              no_stack_check: bool = typer.Option(False, "--no-stack-check",
                                                  help="Do not require OLD to be off every stack.")):
    """Send calls of a function to a function of a loaded library (undo with `restore`)."""
    from patch_build.loader.libraries import redirect

    record, stats = _guarded(lambda: redirect(pid, old, new, timeout, not no_stack_check))
    _warn(stats)
    f = record.funcs[0]
    _say(f"redirected {f.objname}:{f.name} to {new} in process {pid} ({_costs(stats)})")
    _late(stats, "the redirect stays")


@app.command()
def restore(old: str = typer.Argument(..., help="[OBJ:]FUNCTION redirected."), pid: int = PidOption,
            timeout: float = TimeoutOption):
    """Undo a redirect: calls of the function run its own code again."""
    from patch_build.loader.libraries import restore as restore_

    record, stats = _guarded(lambda: restore_(pid, old, timeout))
    _warn(stats)
    f = record.funcs[0]
    _say(f"restored {f.objname}:{f.name} in process {pid} ({_costs(stats)})")
    _late(stats, "the function is restored")


lib_app = command_app("Load and unload shared libraries in a running process (its own dlopen/dlclose).",
                      add_completion=False, no_args_is_help=True)
app.add_typer(lib_app, name="lib")


@lib_app.command("load")
def lib_load(library: Path = typer.Argument(..., help="LIB.so"), pid: int = PidOption,
             timeout: float = TimeoutOption):
    """dlopen a library in the process (one thread makes the call, the others run on)."""
    from patch_build.loader.libraries import load_library

    record, stats = _guarded(lambda: load_library(pid, str(library), timeout))
    _warn(stats)
    _say(f"loaded {record.library} in process {pid} as {record.module} ({_costs(stats)})")
    _late(stats, "the library stays loaded")


@lib_app.command("unload")
def lib_unload(library: str = typer.Argument(..., help="The library `lib load` loaded: its name or path."),
               pid: int = PidOption, timeout: float = TimeoutOption):
    """dlclose a library `lib load` loaded; refused while a redirect leads into it."""
    from patch_build.loader.libraries import unload_library

    record, stats = _guarded(lambda: unload_library(pid, library, timeout))
    _warn(stats)
    _say(f"unloaded {record.library} from process {pid} ({_costs(stats)})")
    _late(stats, "the library is unloaded")


StoreOption = typer.Option(None, "--store", metavar="DIR", envvar="PATCH_BUILD_STORE",
                           help="The patch store (default /var/lib/patch-build).")


def _describe(entry) -> str:
    on = (f"kernel {entry.kernel_release}" if entry.kind == "kernel" else
          "user space: " + ", ".join(f"{t['name']} build-id {t['build_id']}" for t in entry.targets))
    signed = f"signed ({entry.signer})" if entry.signer else "unsigned"
    return f"{entry.name} ({on}; sha256:{entry.sha256[:16]}; {signed})"


@app.command()
def install(module: Path = typer.Argument(..., help="NAME.kpatch or NAME.ko"), store: Optional[Path] = StoreOption,
            force: bool = typer.Option(False, "--force", help="Replace an installed module of that name."),
            trusted_keys: Optional[Path] = typer.Option(None, "--trusted-keys", metavar="DIR",
                                                        help="Only install user-space modules signed by a key of "
                                                             "DIR/*.pem.")):
    """Install a patch module into the store (verified), where it stays until `uninstall`."""
    from patch_build.patchformat.integrity import load_trusted_keys
    from patch_build.loader.store import Store

    trusted = _guarded(lambda: load_trusted_keys(trusted_keys)) if trusted_keys is not None else None
    target = Store(store)
    entry, changed = _guarded(lambda: target.install(module, force, trusted))
    _say(f"{'installed' if changed else 'already installed:'} {_describe(entry)} in {target.root}")


@app.command()
def uninstall(name: str = typer.Argument(..., help="The module name."), store: Optional[Path] = StoreOption):
    """Remove a patch module from the store (a patch applied in a process or the kernel stays applied)."""
    from patch_build.loader.store import Store

    target = Store(store)
    entry = _guarded(lambda: target.uninstall(name))
    _say(f"uninstalled {_describe(entry)} from {target.root}")


@app.command()
def installed(store: Optional[Path] = StoreOption,
              json_output: bool = typer.Option(False, "--json", help="Print JSON.")):
    """The patches in the store, each verified (exit 2 when one is not intact)."""
    from patch_build.common.errors import PatchBuildError
    from patch_build.loader.store import Store

    target = Store(store)
    problems = {}
    entries = _guarded(target.entries)
    for entry in entries:
        try:
            target.verify(entry)
        except PatchBuildError as e:  # corrupt (InputError) or unsafe (Refused): shown, then exit 2
            problems[entry.name] = str(e)
    if json_output:
        typer.echo(json.dumps({"store": str(target.root),
                               "patches": [dict(dataclasses.asdict(e), problem=problems.get(e.name))
                                           for e in entries]}, indent=2, sort_keys=True))
    else:
        if not entries:
            typer.echo(f"no patches installed in {target.root}")
        for entry in entries:
            problem = problems.get(entry.name)
            _say(f"{_describe(entry)} {'NOT INTACT: ' + problem if problem else 'verified'}")
    if problems:
        _fail(f"{len(problems)} installed module(s) not intact: {', '.join(sorted(problems))}", 2)


@app.command()
def daemon(store: Optional[Path] = StoreOption, timeout: float = TimeoutOption,
           only: Optional[list[str]] = typer.Option(None, "--only", metavar="NAME",
                                                    help="Keep only this installed patch applied (repeatable).")):
    """Keep installed patches applied: to every running process they target, and to each new one as it starts
    (in the foreground, one line per action on stdout; needs root)."""
    from patch_build.loader.daemon import run_daemon
    from patch_build.loader.store import Store

    target = Store(store)
    _guarded(lambda: run_daemon(target, timeout, _say, only))


@app.command()
def boot(store: Optional[Path] = StoreOption,
         only: Optional[str] = typer.Option(None, "--only", metavar="NAME", help="Load only this installed patch.")):
    """Load the installed kernel patches of the running kernel, in the store's order, each verified; one not
    intact or refused by the kernel is logged and left out (exit 1), the others load (needs root)."""
    from patch_build.loader.boot import load_kernel_patches
    from patch_build.loader.store import Store

    raise typer.Exit(_guarded(lambda: load_kernel_patches(Store(store).root, only)))


@app.command()
def status(json_output: bool = typer.Option(False, "--json", help="Print JSON.")):
    """Which processes carry which patches."""
    from patch_build.loader.daemon import carried_patches

    carried = _guarded(carried_patches)
    if json_output:
        typer.echo(json.dumps({"processes": [{"pid": pid, "program": program, "patches": [
            {"module": r.module, "state": r.state, "path": r.path} for r in records]}
            for pid, program, records in carried]}, indent=2))
        return
    if not carried:
        typer.echo("no process carries a patch")
    for pid, program, records in carried:
        _say(f"{pid} {program}: " + ", ".join(f"{r.module} [{r.state}]" for r in records))


var_app = command_app("Read and set global and static variables of a running process.", add_completion=False,
                      no_args_is_help=True)
app.add_typer(var_app, name="var")
TypeOption = typer.Option(None, "--type", help="The type of a variable no DWARF describes: int, uint, i8..u64, "
                                               "bool, float, double (int and uint take the symbol's size).")
VarName = typer.Argument(..., help="NAME, file.c:NAME or function::NAME (statics), ns::NAME (C++).")


@var_app.command("get")
def var_get(name: str = VarName, pid: int = PidOption, type_name: Optional[str] = TypeOption):
    """Print a variable's value."""
    from patch_build.loader.variables import get_values

    _, value = _guarded(lambda: get_values(pid, name, type_name))
    typer.echo(printable(value))


@var_app.command("set", context_settings={"ignore_unknown_options": True})  # VALUE may be -1
def var_set(name: str = VarName, value: str = typer.Argument(..., help="The new value."), pid: int = PidOption,
            type_name: Optional[str] = TypeOption, timeout: float = TimeoutOption):
    """Set a variable (every thread stopped meanwhile); recorded in the target for `var undo`."""
    from patch_build.loader.variables import set_value

    entry, stats = _guarded(lambda: set_value(pid, name, value, type_name, timeout))
    _warn(stats)
    typer.echo(f"set {printable(entry.name)} in process {pid}: {printable(entry.old_text)} -> "
               f"{printable(entry.new_text)} ({_costs(stats)})")
    _late(stats, "the variable is set")


@var_app.command("undo")
def var_undo(name: str = VarName, pid: int = PidOption, type_name: Optional[str] = TypeOption,
             timeout: float = TimeoutOption):
    """Put back the value the newest `var set` of NAME replaced."""
    from patch_build.loader.variables import undo_set

    entry, stats = _guarded(lambda: undo_set(pid, name, type_name, timeout))
    _warn(stats)
    typer.echo(f"undid {printable(entry.name)} in process {pid}: {printable(entry.new_text)} -> "
               f"{printable(entry.old_text)} ({_costs(stats)})")
    _late(stats, "the variable is restored")


@var_app.command("list")
def var_list(pid: int = PidOption, pattern: Optional[str] = typer.Argument(None, help="A glob on the names.")):
    """Variables DWARF describes, with their types and current values."""
    from patch_build.loader.variables import list_values

    found_values = _guarded(lambda: list_values(pid, pattern))
    if not found_values:
        typer.echo(f"no variables{' matching ' + printable(pattern) if pattern else ''} described by DWARF in "
                   f"process {pid}")
    for found, value in found_values:
        typer.echo(f"{printable(found.name)} ({printable(found.type.name)}) = {printable(value)}"
                   f"  [{printable(found.object.name)} {found.address:#x}]")


flags_app = command_app("List, read and set the gflags of a running process, through gflags itself.",
                        add_completion=False, no_args_is_help=True)
app.add_typer(flags_app, name="flags")
FlagName = typer.Argument(..., help="The flag: port, --port or FLAGS_port.")


@flags_app.command("list")
def flags_list(pid: int = PidOption):
    """The process's flags, with their types and current values."""
    from patch_build.loader.gflags import list_flags

    for flag, value in _guarded(lambda: list_flags(pid)):
        typer.echo(f"--{flag.name} ({flag.type.name}) = {printable(value)}  [{printable(flag.object.name)}]")


@flags_app.command("get")
def flags_get(name: str = FlagName, pid: int = PidOption):
    """Print a flag's value."""
    from patch_build.loader.gflags import get_flag

    typer.echo(printable(_guarded(lambda: get_flag(pid, name))))


@flags_app.command("set", context_settings={"ignore_unknown_options": True})  # VALUE may be -1
def flags_set(name: str = FlagName, value: str = typer.Argument(..., help="The new value."), pid: int = PidOption,
              timeout: float = TimeoutOption):
    """Set a flag with gflags' SetCommandLineOption run in the target (validators apply); recorded for
    `flags undo`."""
    from patch_build.loader.gflags import set_flag

    entry, stats = _guarded(lambda: set_flag(pid, name, value, timeout))
    _warn(stats)
    typer.echo(f"set {printable(entry.name)} in process {pid}: {printable(entry.old_text)} -> "
               f"{printable(entry.new_text)} ({_costs(stats)})")
    _late(stats, "the flag is set")


@flags_app.command("undo")
def flags_undo(name: str = FlagName, pid: int = PidOption, timeout: float = TimeoutOption):
    """Set a flag back (through gflags) to the value the newest `flags set` of it replaced."""
    from patch_build.loader.gflags import undo_flag

    entry, stats = _guarded(lambda: undo_flag(pid, name, timeout))
    _warn(stats)
    typer.echo(f"undid {printable(entry.name)} in process {pid}: {printable(entry.new_text)} -> "
               f"{printable(entry.old_text)} ({_costs(stats)})")
    _late(stats, "the flag is restored")


main_entry = entry_point(app, PROG)
