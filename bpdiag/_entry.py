"""The ``bpdiag`` console script: a Ctrl-C while the command line loads (numpy, click)
ends like one later, with one line and status 130, not a traceback of an interrupted
import."""

from __future__ import annotations

import signal
import sys


def _interrupted(signum: int, frame: object) -> None:
    sys.stderr.write("\nerror: interrupted\n" if sys.stderr.isatty() else "error: interrupted\n")
    raise SystemExit(128 + signum)


def main() -> None:
    loading = signal.signal(signal.SIGINT, _interrupted)
    from bpdiag.cli import main as command_line

    signal.signal(signal.SIGINT, loading)
    command_line()
