"""Options that several commands share, spelled the same everywhere.

The core count is ``--num-cores N`` (short ``-n``) on every command that takes one, with
``--cores N`` (short ``-k``) accepted as an alias. New commands declare both parameters with
`NumCores` and `CoresAlias` and read them with `core_count`, which also reports which spelling
the user typed so errors can name it::

    def tune_cmd(num_cores: NumCores = None, cores: CoresAlias = None) -> None:
        with cli_errors({"num_cores": core_flag(num_cores, cores)}):
            count, _ = core_count(num_cores, cores, available=len(usable_cores()))
            ...
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from ..artifact.sizes import plural

__all__ = ["NumCores", "CoresAlias", "core_count", "core_flag", "remember_args", "usable_cores"]

#: The running command's arguments as typed (set by `corepipe.cli._app` while parsing), so an
#: error can name the spelling of a flag the user typed.
_TYPED: list[str] = []


def remember_args(args: list[str]) -> None:
    _TYPED[:] = args


NumCores = Annotated[str | None, typer.Option(
    "--num-cores", "-n", metavar="N",
    help="Cores to use, one stage on each (alias: --cores, -k).", show_default=False,
)]
CoresAlias = Annotated[str | None, typer.Option(
    "--cores", "-k", metavar="N", hidden=True, help="Alias of --num-cores.", show_default=False,
)]


def usable_cores() -> list[int]:
    """The core ids this process may run on (its affinity mask)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def core_flag(num_cores: str | None, cores: str | None) -> str:
    """The spelling of the core-count flag the user typed: ``--num-cores`` (also for ``-n``, and
    when neither was given), or the alias as typed, ``--cores`` or ``-k`` (hidden from --help,
    so an error names the very letters on the command line)."""
    if cores is None or num_cores is not None:
        return "--num-cores"
    short = any(a == "-k" or (a.startswith("-k") and not a.startswith("--")) for a in _TYPED)
    return "-k" if short and not any(a == "--cores" or a.startswith("--cores=") for a in _TYPED) else "--cores"


def core_count(
    num_cores: str | None, cores: str | None, *, auto: bool = False, available: int | None = None,
) -> tuple[int | str | None, str]:
    """Read ``--num-cores`` / ``--cores``: ``(value, flag)``, where ``value`` is a positive int,
    ``"auto"`` (when ``auto`` allows it) or ``None`` (neither given), and ``flag`` the spelling
    the user typed (``"--num-cores"`` when neither was).

    Raises:
        typer.BadParameter: both spellings given, a value that is not a positive integer, or more
            cores than ``available``; the message names the flag as typed.
    """
    if num_cores is not None and cores is not None:
        raise typer.BadParameter(
            f"--num-cores {num_cores} and --cores {cores} are the same option: give it once"
        )
    flag = core_flag(num_cores, cores)
    raw = num_cores if flag == "--num-cores" else cores
    if raw is None:
        return None, flag
    text = raw.strip().lower()
    if auto and text == "auto":
        return "auto", flag
    if not (text.isdigit() and int(text) > 0):
        what = "a positive integer or 'auto'" if auto else "a positive integer"
        raise typer.BadParameter(f"{flag} must be {what}, got {raw!r}")
    value = int(text)
    if available is not None and value > available:
        raise typer.BadParameter(
            f"{flag} {value}: this process may run on only {plural(available, 'core')}; "
            f"use {flag} {available} or fewer"
        )
    return value, flag
