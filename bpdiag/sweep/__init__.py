"""Sweeps: specs expanded to runs, trained on Dask, logged to MLflow by one writer.

- ``config``: the sweep file (``SweepSpec``) and one run (``RunConfig``), validated by pydantic;
- ``execute``: one run on a worker, pure and picklable (``RunResult``);
- ``schedule``: the Dask workers (a LocalCluster or a scheduler's), warmed and fed the runs;
- ``driver``: ``run_sweep``: resume, the workers' results into the store as they arrive;
- ``tracking``: the one MLflow writer (and reader); ``shield``: its writes not cut in half
  by an interrupt; ``compare``: tables across runs; ``figures``: the verdict grid, loss curves
  and bars across runs.
"""

from bpdiag.sweep.driver import SweepOutcome, run_sweep

__all__ = ["SweepOutcome", "run_sweep"]
