"""What train.py and evaluate.py share: absl flag parsing with one-line errors."""

from __future__ import annotations

import os
import sys

from absl import flags


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
