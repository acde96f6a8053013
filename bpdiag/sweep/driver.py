"""``run_sweep``: expand the spec, skip what the store already has, train on the workers, log
each result as it arrives (the driver is the only MLflow writer), finish with the parent's
summary and comparisons. Every store call runs ``shielded()``: an interrupt waits for it."""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import wait
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bpdiag.sweep import notes, schedule
from bpdiag.sweep.compare import run_names
from bpdiag.sweep.config import RunConfig, SweepSpec, load_spec
from bpdiag.sweep.execute import RunResult
from bpdiag.sweep.shield import shielded
from bpdiag.sweep.tracking import LEASE_S, STORE_TIMEOUT_S, Tracker, ui_url

CLAIM_SETTLE_S = 1.0  # between claiming and comparing claims: other sweeps' claims land
WAIT_POLL_S = 2.0  # how often a sweep looks at runs another sweep is training


@dataclass
class SweepOutcome:
    spec: SweepSpec
    runs: list[RunConfig]  # everything the spec expands to
    skipped: int = 0  # already FINISHED in the store
    finished: int = 0
    failed: int = 0
    waiting: int = 0  # at the start, being trained by another live sweep on the same store
    by_others: int = 0  # of these, finished by the other sweep
    experiment_id: str | None = None
    parent_run_id: str | None = None
    table: pd.DataFrame | None = None  # one row per FINISHED child of this sweep's run_keys
    timings: dict[str, float] = field(default_factory=dict)
    url: str = ""


@dataclass
class _Plan:
    """What this invocation does in the store: its parent run and the runs still to do."""

    tracker: Tracker
    experiment_id: str
    parent: str
    keys: set[str]  # every run_key of the spec
    todo: list[RunConfig]  # the runs this sweep trains (its claims won)
    waiting: list[RunConfig]  # runs another live sweep is training
    claims: dict[str, str] = field(default_factory=dict)  # run_key → this sweep's child
    names: dict[str, str] = field(default_factory=dict)  # run_key → the child's name
    losses: dict[str, pd.DataFrame] = field(default_factory=dict)  # run_id → (step, loss)


def run_sweep(
    spec_path: str | Path,
    tracking_uri: str | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    rerun: bool = False,
    on_start: Callable[[SweepOutcome, int], None] | None = None,
    on_result: Callable[[RunResult], None] | None = None,
    max_runs: int | None = None,
    max_run_gib: float | None = None,
    lease: float = LEASE_S,
    store_timeout: float = STORE_TIMEOUT_S,
) -> SweepOutcome:
    """Run (or resume) the sweep in ``spec_path``.

    Resume: run_keys with a FINISHED child in the experiment are skipped (``rerun`` runs them
    again and deletes the superseded children once their replacements finish); what a dead
    sweep left RUNNING becomes KILLED; runs another live sweep is training are waited for, and
    taken over if it dies (``tracking``: ``lease`` seconds without a heartbeat, or at once on
    its own host). Raises ``SpecError`` for an invalid spec before anything is written.
    ``on_start(outcome, n_todo)`` and ``on_result(result)`` let the CLI show progress;
    ``max_runs``/``max_run_gib`` raise the spec's bounds (``load_spec``). A store that cannot
    be used raises ``StoreError`` within about ``store_timeout`` seconds (``Tracker.probe``).
    """
    t_start = time.perf_counter()
    spec, runs = load_spec(spec_path, max_runs, max_run_gib)
    out = SweepOutcome(spec, runs)
    pending = schedule.start(scheduler, workers)
    try:
        source = Path(spec_path).read_text(encoding="utf-8-sig")  # load_spec read it as UTF-8
        with shielded():  # a new store's migrations, the parent run: never cut in half
            tracker = Tracker(tracking_uri)
            tracker.probe(store_timeout)
            plan, wanted = _open(tracker, spec, runs, source, rerun, lease, out)
    except BaseException:
        pending.abort()
        raise
    status, pool, closing = "FAILED", None, None
    spent = {"train_s": 0.0, "worker_s": 0.0}  # sums only: a result is dropped once logged
    beat = _Heartbeat(plan.tracker, plan.parent, lease)
    try:
        _claim(plan, wanted, rerun, lease, out)
        out.waiting = len(plan.waiting)
        if on_start:
            on_start(out, len(plan.todo) + len(plan.waiting))
        import bpdiag.sweep.figures  # noqa: F401  (matplotlib, for the parent's figures) meanwhile

        pool = pending.result()
        try:
            out.timings.update(workers=pool.count, warm_s=pool.warm_seconds,
                               startup_s=time.perf_counter() - t_start)  # fmt: skip
            t = time.perf_counter()
            todo = plan.todo or _take_over(plan, lease, out)
            while todo:
                for result in pool.results(todo):
                    with shielded():
                        _log(plan, result, rerun, out)
                    spent["train_s"] += result.summary.get("train_seconds", 0.0)
                    spent["worker_s"] += result.timings.get("total_s", 0.0)
                    if on_result:
                        on_result(result)
                todo = _take_over(plan, lease, out)
            out.timings["run_phase_s"] = time.perf_counter() - t
        finally:
            closing = schedule.start_closing(pool)  # the cluster shuts down while we finish
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        beat.stop()
        if pool is None:
            pending.abort()
        with shielded():
            _finish(plan, status, out)
        if closing is not None:
            wait([closing])
        out.timings.update(
            wall_s=time.perf_counter() - t_start, log_s=plan.tracker.log_seconds, **spent,
        )  # fmt: skip
    return out


class _Heartbeat:
    """Renews the parent's heartbeat every ``lease``/6 seconds in a daemon thread."""

    def __init__(self, tracker: Tracker, parent: str, lease: float) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(tracker, parent, lease / 6),
                                        name="bpdiag-heartbeat", daemon=True)  # fmt: skip
        self._thread.start()

    def _run(self, tracker: Tracker, parent: str, every: float) -> None:
        while not self._stop.wait(every):
            try:
                tracker.heartbeat(parent)
            except Exception:  # a store busy for a moment: the next beat comes soon
                pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _open(tracker: Tracker, spec: SweepSpec, runs: list[RunConfig], spec_text: str, rerun: bool,
          lease: float, out: SweepOutcome) -> tuple[_Plan, list[RunConfig]]:  # fmt: skip
    """The experiment, dead sweeps' leftovers marked KILLED, a new parent run; the runs to do."""
    exp_id = tracker.experiment_id(spec.experiment_name)
    out.experiment_id, out.url = exp_id, ui_url(exp_id)
    tracker.check_artifacts(exp_id)
    tracker.reap(exp_id, lease)
    finished = tracker.finished_keys(exp_id)
    wanted = [cfg for cfg in runs if rerun or cfg.run_key not in finished]
    out.skipped = len(runs) - len(wanted)
    tracker.describe(exp_id, notes.experiment_note(spec, runs))
    parent = tracker.start_parent(exp_id, spec, spec_text, len(runs), out.skipped)
    out.parent_run_id = parent
    plan = _Plan(tracker, exp_id, parent, {cfg.run_key for cfg in runs}, [], [])
    plan.names = run_names(runs)
    return plan, wanted


def _claim(plan: _Plan, wanted: list[RunConfig], rerun: bool, lease: float,
           out: SweepOutcome) -> None:  # fmt: skip
    """A claim on every run to do (``tracking``): the runs this sweep trains, those it waits
    for."""
    with shielded():
        plan.tracker.claim(plan.experiment_id, plan.parent, out.spec.name, wanted, plan.claims,
                           plan.names)  # fmt: skip
    time.sleep(CLAIM_SETTLE_S)  # claims stamped before ours are committed by now
    with shielded():
        _divide(plan, wanted, rerun, lease, out)


def _divide(plan: _Plan, wanted: list[RunConfig], rerun: bool, lease: float,
            out: SweepOutcome) -> None:  # fmt: skip
    """Split ``wanted`` (all claimed by this sweep) into the runs it trains (its claim is the
    oldest live one) and those it waits for; drop the runs another sweep finished meanwhile."""
    tracker, exp = plan.tracker, plan.experiment_id
    live, _ = tracker.live_parents(exp, lease)
    owners = tracker.owners(exp, live | {plan.parent})
    finished = set() if rerun else tracker.finished_keys(exp)
    plan.todo, plan.waiting = [], []
    for cfg in wanted:
        key = cfg.run_key
        if key in finished:  # another sweep finished it between our look and our claim
            tracker.client.delete_run(plan.claims.pop(key))
            out.by_others += 1
        elif owners.get(key) == plan.claims[key]:
            plan.todo.append(cfg)
        else:
            plan.waiting.append(cfg)


def _take_over(plan: _Plan, lease: float, out: SweepOutcome) -> list[RunConfig]:
    """Wait for the runs other live sweeps are training: those they finish count as theirs,
    those they leave (their sweep died) this sweep trains. Returns the runs to train next."""
    while plan.waiting:
        with shielded():
            plan.tracker.reap(plan.experiment_id, lease)
            _divide(plan, plan.waiting, False, lease, out)  # rerun or not: theirs is fresh
        if plan.todo:
            return plan.todo
        if plan.waiting:
            time.sleep(WAIT_POLL_S)
    return []


def _log(plan: _Plan, result: RunResult, rerun: bool, out: SweepOutcome) -> None:
    """One result into a child that replaces its claim; then one FINISHED child per run_key
    (the newest)."""
    key = result.run_key
    run_id = claim = plan.claims[key]
    try:
        run_id = plan.tracker.log_child(claim, result, plan.names.get(key, ""))
    except Exception:  # an artifact or metric that cannot be written: this child fails alone
        result.status, result.error = "FAILED", traceback.format_exc()
        plan.tracker.fail_child(claim, result.error)
    del plan.claims[key]  # only now: a child cut off while logged is KILLED at the end
    if result.steps is not None:
        plan.losses[run_id] = result.steps[["step", "loss"]]
    if result.status == "FINISHED":
        plan.tracker.keep_newest(plan.experiment_id, key)  # supersedes, or settles a race
    out.finished += result.status == "FINISHED"
    out.failed += result.status != "FINISHED"
    result.figures, result.layers, result.steps = {}, None, None  # logged; keep memory flat


def _finish(plan: _Plan, status: str, out: SweepOutcome) -> None:
    """The parent's summary.csv, figures and verdict counts (if the sweep finished), its status."""
    t = time.perf_counter()
    for run_id in plan.claims.values():  # claimed, never trained: interrupted or failed
        plan.tracker.client.set_terminated(run_id, "KILLED")
    plan.claims.clear()
    if status == "FINISHED":
        out.table = plan.tracker.table(plan.experiment_id, plan.keys)
        files = _comparison_figures(plan.tracker, out.table, plan.losses)
        plan.tracker.finish_parent(plan.experiment_id, plan.parent, out.table, files, status)
    else:
        plan.tracker.end_parent(plan.parent, status)
    out.timings["finish_s"] = time.perf_counter() - t


def _comparison_figures(
    tracker: Tracker, table: pd.DataFrame, losses: dict[str, pd.DataFrame]
) -> dict[str, bytes | str]:
    """The parent's figures as PNG bytes: the verdict grid, loss curves by optimizer × clip and
    by norm × residual.
    ``losses``: the loss series this invocation logged (others, from earlier invocations, are
    read back). A figure that fails becomes ``<name>.error.txt`` with its traceback."""
    import io
    import traceback

    from bpdiag.sweep import figures
    from bpdiag.sweep.compare import comparable, varying_axes

    if table is None or table.empty:
        return {}
    makers = {"verdict_grid.png": lambda: figures.verdict_grid(table)}
    axes = varying_axes(table)

    def history(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
        return {r: losses[r] if r in losses else tracker.loss_history(r) for r in runs["run_id"]}

    if "optimizer" in axes or "clip" in axes:
        by_opt = comparable(table, ["optimizer", "clip"])
        makers["loss_curves.png"] = lambda: figures.loss_curves(by_opt, history(by_opt))
    if "norm" in axes or "residual" in axes:  # the residual scale goes with the skip
        by_cure = comparable(table, ["norm", "residual", "residual_scale"])
        makers["cures.png"] = lambda: figures.loss_curves(by_cure, history(by_cure),
                                                          ("norm", "residual"),
                                                          ("residual_scale",))  # fmt: skip
    out: dict[str, bytes | str] = {}
    for name, make in makers.items():
        try:
            buf = io.BytesIO()
            make().savefig(buf, dpi=110, format="png")
            out[name] = buf.getvalue()
        except Exception:
            out[f"{name}.error.txt"] = traceback.format_exc()
    return out
