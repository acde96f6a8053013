"""Store writes that an interrupt does not cut in half.

The CLI turns SIGINT and SIGTERM into an exception raised in the main thread, so that the sweep
cleans up (marks what it leaves KILLED, stops its workers). Raised inside a store call, that
exception would cut it short: MLflow's SQLAlchemy session loses its connection mid-fetch (the
clean-up then finds "a closed database" or waits out SQLite's lock), a child is left RUNNING
half-written, or a new store's migrations stop halfway. So the driver runs its store calls
``shielded()``, and the signal handler hands its exception to ``interrupt``: raised at once
outside a shielded block, at the block's end inside one. Only the main thread is shielded, as
only it receives signals.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

_depth = 0  # shielded blocks the main thread is in
_pending: list[BaseException] = []  # an interrupt that arrived inside one


def interrupt(exc: BaseException) -> None:
    """Raise ``exc`` now, or at the end of the shielded block the main thread is in."""
    if _depth and threading.current_thread() is threading.main_thread():
        _pending.append(exc)
        return
    raise exc


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Run the block to its end before an interrupt (``interrupt``) is raised."""
    global _depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if not _depth and _pending:
            exc = _pending.pop()
            _pending.clear()
            raise exc
