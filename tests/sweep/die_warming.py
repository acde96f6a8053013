"""A Dask worker preload (``dask worker --preload``) for test_schedule: the first worker to warm
up dies at once, as a worker killed on a fresh machine would; the marker file named by
``BPDIAG_TEST_DIE_ONCE`` makes it happen once across all workers and their restarts."""

import os

from bpdiag.sweep import execute

_warm_up = getattr(execute.warm_up, "__wrapped__", execute.warm_up)  # Dask may load us twice


def _dies_once(*args, **kwargs):
    try:
        os.close(os.open(os.environ["BPDIAG_TEST_DIE_ONCE"], os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return _warm_up(*args, **kwargs)
    os._exit(1)


_dies_once.__wrapped__ = _warm_up
execute.warm_up = _dies_once  # client.run looks warm_up up here by name
