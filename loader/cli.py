"""`patch-ctl`: apply, revert and list patches in running processes; show what a module holds."""
from __future__ import annotations

import dataclasses
import json
import signal
from pathlib import Path
from typing import Optional

import typer

from diffobj.console import entry_point, error, guarded, printable

PROG = "patch-ctl"
app = typer.Typer(add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Apply, revert and list live patches in running user-space processes.")

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
def apply(module: Path = typer.Argument(..., help="NAME.kpatch"), pid: int = PidOption,
          timeout: float = TimeoutOption,
          no_stack_check: bool = typer.Option(False, "--no-stack-check",
                                              help="Do not require replaced functions to be off every stack."),
          trusted_keys: Optional[Path] = typer.Option(None, "--trusted-keys", metavar="DIR",
                                                      help="Only apply modules signed by a key of DIR/*.pem "
                                                           "(Ed25519 public keys).")):
    """Patch a running process."""
    from linker.integrity import load_trusted_keys
    from loader.patcher import apply_patch

    trusted = _guarded(lambda: load_trusted_keys(trusted_keys)) if trusted_keys is not None else None
    record, stats = _guarded(lambda: apply_patch(pid, str(module), timeout, not no_stack_check, trusted))
    _warn(stats)
    _say(f"applied {record.module} to process {pid}: {len(record.funcs)} function(s) redirected ({_costs(stats)})")
    _late(stats, "the patch stays applied")


@app.command()
def revert(name: Optional[str] = typer.Argument(None, help="The patch (module name) to revert."),
           pid: int = PidOption, all_: bool = typer.Option(False, "--all", help="Revert every patch, newest first."),
           timeout: float = TimeoutOption):
    """Undo a patch (or all of them, newest first)."""
    from loader.patcher import revert_patches

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
    from loader.patcher import list_patches

    records, stats = _guarded(lambda: list_patches(pid))
    _warn(stats)
    if json_output:
        typer.echo(json.dumps({"pid": pid, "patches": [dataclasses.asdict(r) for r in records]}, indent=2))
        return
    if not records:
        typer.echo(f"no patches in process {pid}")
    for r in records:
        at = ", ".join(f"{start:#x} ({size} bytes)" for start, size in r.mappings)
        _say(f"{r.seq}. {r.module} [{r.state}] at {at} from {r.path}")
        for f in r.funcs:
            on = f" (over {f.prev})" if f.prev else ""
            _say(f"   {f.objname}:{f.name} {f.old_addr:#x} -> {f.new_addr:#x} ({f.new_size} bytes){on}")
        for eh_frame, _, _, confirmed in r.frames:
            typer.echo(f"   unwind information {'registered' if confirmed else 'perhaps registered'} at {eh_frame:#x}")


@app.command()
def info(module: Path = typer.Argument(..., help="NAME.kpatch"),
         json_output: bool = typer.Option(False, "--json", help="Print JSON.")):
    """What a patch module holds: targets, build-ids, functions and sizes, its digest and signer."""
    from loader.patcher import module_info

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
        for p in mod.problems:
            _say(f"problem: {p}")
    if mod.problems:
        more = f" (and {len(mod.problems) - 1} more)" if len(mod.problems) > 1 else ""
        _fail(f"{module.name}: malformed patch module: {mod.problems[0]}{more}", 2)


main_entry = entry_point(app, PROG)
