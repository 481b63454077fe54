"""What the commands (train.py, evaluate.py, `pqm`) share: absl flag parsing and one-line errors."""

from __future__ import annotations

import errno
import os
import re
import shutil
import sys
from collections.abc import Callable

from absl import app, flags


def parse_flags(argv: list[str], *, prog: str, usage: str) -> list[str]:
    """absl flag parsing; a missing config file or a bad `--config.x=y` exits with one line."""
    for i, arg in enumerate(argv):
        path = arg.split("=", 1)[1] if arg.startswith("--config=") else None
        if arg == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
        if path is not None and not os.path.isfile(path.split(":", 1)[0]):
            sys.exit(f"{prog}: config file {path} does not exist (see configs/*.py)")
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"{prog}: {e}\nusage: {usage}")
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        message = str(e).replace("\\n", " ").replace("\\'", "'").replace("\n", " ")
        sys.exit(f"{prog}: bad config override: {message}")


def disk_full(error: BaseException) -> OSError | None:
    """The `ENOSPC` OSError behind `error` (itself, or a cause or context), if any."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return e
        if "No space left on device" in str(e):  # a library's own error type, message kept
            where = re.search(r'"(/[^"]+)"', str(e))
            return OSError(errno.ENOSPC, "No space left on device", where and where.group(1))
        e = e.__cause__ or e.__context__
    return None


def exit_disk_full(prog: str, error: OSError, workdir: str | os.PathLike) -> None:
    """Prints `disk_full_message` and ends the process at once: background writer threads of
    a failed save would otherwise print their own tracebacks while the interpreter shuts down."""
    sys.stderr.write(disk_full_message(prog, error, workdir) + "\n")
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(1)


def disk_full_message(prog: str, error: OSError, workdir: str | os.PathLike) -> str:
    """One line: which file could not be written, the space left, and that a rerun resumes."""
    try:
        free = f"{shutil.disk_usage(workdir).free / 1e6:.1f} MB free in {workdir}"
    except OSError:
        free = f"{workdir} unreadable"
    where = f" writing {error.filename}" if error.filename else ""
    return (
        f"{prog}: no space left on the device{where} ({free}); free some space and rerun the "
        "same command: it resumes from its last checkpoint"
    )


def run(
    main: Callable[[list[str]], None],
    *,
    prog: str,
    usage: str,
    workdir: Callable[[], str],
    argv: list[str] | None = None,
):
    """`absl.app.run(main)` (flags from `argv`, default sys.argv) with one-line errors for bad
    flags, a full disk, and another process of a multi-process run lost (then this one stops
    too, saying how to resume)."""

    def guarded(argv: list[str]) -> None:
        try:
            main(argv)
        except Exception as e:  # ENOSPC, maybe wrapped by a library (orbax, soundfile)
            full = disk_full(e)
            if full is not None:
                exit_disk_full(prog, full, workdir())
            from pqm_jax import multihost

            lost = multihost.lost_peer(e)
            if lost is not None:
                multihost.stop(f"{prog}: {lost}")
            raise

    app.run(guarded, argv=argv, flags_parser=lambda args: parse_flags(args, prog=prog, usage=usage))
