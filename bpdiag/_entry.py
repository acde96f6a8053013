"""The ``bpdiag`` console script: a Ctrl-C while the command line loads (numpy, click)
ends like one later, with one line and status 130, not a traceback of an interrupted
import; one while Python tears itself down no longer changes how the command ended."""

from __future__ import annotations

import atexit
import signal
import sys


def _interrupted(signum: int, frame: object) -> None:
    sys.stderr.write("\nerror: interrupted\n" if sys.stderr.isatty() else "error: interrupted\n")
    raise SystemExit(128 + signum)


def _ignore_ctrl_c_from_now_on() -> None:
    """The last exit function: the command has ended and told why, and Python next drops
    its signal handlers (SIGINT then kills the process, status −2, while modules are torn
    down); a Ctrl-C in that last moment changes nothing now. The phases before it (joining
    threads, the other exit functions) still see the command's handlers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def main() -> None:
    atexit.register(_ignore_ctrl_c_from_now_on)  # first registered, so it runs last
    loading = signal.signal(signal.SIGINT, _interrupted)
    from bpdiag.cli import main as command_line

    signal.signal(signal.SIGINT, loading)
    command_line()
