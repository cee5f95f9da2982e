"""The one way a user-supplied value enters a rendered sbatch script.

Two parsers read that script: bash (the shell part) and sbatch (the `#SBATCH` lines). Each gets its own
function here and nothing else in `slurm/` writes a user value: paths, names, env values, the command
line in the header comment. Both produce a single line for any input, so no value can end a comment or
an `#SBATCH` line and start a line of its own.
"""

from __future__ import annotations

import re

from core.config import ConfigError

_SHELL_SAFE = re.compile(r"[A-Za-z0-9_./:=@%,+-]+")
_SBATCH_SAFE = re.compile(r"[A-Za-z0-9_./:=@%,+-]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def shell_quote(value: str, multiline: bool = False) -> str:
    """One bash word that reads back as `value`, on one line. Plain words stay as they are, anything else
    is single-quoted; control characters (newline, carriage return, tab, escape ...) use bash's `$'...'`
    with escapes so the word never spans lines. NUL cannot be in a bash word (nor in argv): refused.
    `multiline=True` keeps line breaks literal inside single quotes: only for atom's own script text
    (the rank wrapper), which reads better as lines; never for a user value."""
    if "\x00" in value:
        raise ConfigError(f"NUL character in a value for the job script: {value!r}")
    if _SHELL_SAFE.fullmatch(value):
        return value
    if not _CONTROL.search(value.replace("\n", "") if multiline else value):
        return "'" + value.replace("'", "'\\''") + "'"
    out = []
    for ch in value:
        if ch in "\\'":
            out.append("\\" + ch)
        elif _CONTROL.fullmatch(ch):
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "$'" + "".join(out) + "'"


def shell_command_line(argv: list[str]) -> str:
    """A command line as one line of shell words (for the script's header comment and for logs)."""
    return " ".join(shell_quote(a) for a in argv)


def sbatch_quote(value: str) -> str:
    """One `#SBATCH` argument. sbatch's own parser (not a shell) splits on blanks, ends the line at an
    unquoted '#', and inside double quotes takes `\\"` and `\\\\` as escapes. It has no escape for a line
    break or other control characters: those are refused."""
    if _CONTROL.search(value):
        raise ConfigError(f"control character (newline, carriage return, NUL ...) in an sbatch value: {value!r}")
    if _SBATCH_SAFE.fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def slurm_filename_pattern(path: str) -> str:
    """A literal path inside an `--output`/`--error` pattern: SLURM expands `%` sequences there, so each
    literal `%` is doubled. A backslash there turns pattern expansion off and is dropped (the log would
    go elsewhere and `%j` would stay literal): such paths are refused with the reason."""
    if "\\" in path:
        raise ConfigError(f"run.dir {path!r}: SLURM drops backslashes from log file names; "
                          "choose a run.dir without '\\'")
    return path.replace("%", "%%")
