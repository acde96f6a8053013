"""The ``bpdiag`` command line (click). Only this module prints."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
from pathlib import Path

import click

from bpdiag.choices.activations import ACTIVATIONS
from bpdiag.choices.clipping import CLIPPING
from bpdiag.choices.defaults import DEFAULTS as D
from bpdiag.choices.losses import LOSSES
from bpdiag.choices.norms import NORMS
from bpdiag.choices.optim import OPTIMIZERS


class _NumberOrName(click.ParamType):
    """A value that is a number or a name ('0.5' → 0.5, 'inv_sqrt_depth' stays)."""

    name = "number|name"

    def convert(self, value, param, ctx):
        if isinstance(value, int | float):
            return float(value)
        try:
            return float(value)
        except ValueError:
            return value


NUMBER_OR_NAME = _NumberOrName()


def _dataset_names() -> list[str]:
    from bpdiag.data import DATASETS

    return list(DATASETS)


class _Commands(click.Group):
    """A Ctrl-C that no command handles ends with one line and status 130 (click's own
    handling says "Aborted!" and exits 1, the status of a failure)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            _interrupted("interrupted", 130)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bpdiag")
def main() -> None:
    """bpdiag: train deep MLPs and see what their gradients do."""


@main.command()
@click.option("--dataset", type=click.Choice(_dataset_names()), default=D.dataset,
              show_default=True)  # fmt: skip
@click.option("--depth", type=click.IntRange(1), default=D.depth, show_default=True,
              help="weight layers")  # fmt: skip
@click.option("--width", type=click.IntRange(1), default=D.width, show_default=True)
@click.option("--activation", type=click.Choice(list(ACTIVATIONS)), default=D.activation,
              show_default=True)  # fmt: skip
@click.option("--init", default=D.init, show_default=True,
              help="xavier_normal, he_normal, lecun_normal, orthogonal[_<gain>], normal_<std>, ...")  # fmt: skip
@click.option("--optimizer", type=click.Choice(list(OPTIMIZERS)), default=D.optimizer,
              show_default=True)  # fmt: skip
@click.option("--lr", type=float, default=D.lr, show_default=True)
@click.option("--steps", type=click.IntRange(1), default=D.steps, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=D.batch_size, show_default=True)
@click.option("--clip", type=click.Choice(list(CLIPPING)), default=D.clip, show_default=True)
@click.option("--clip-value", type=float, default=None)
@click.option("--record-every", type=click.IntRange(1), default=D.record_every, show_default=True)
@click.option("--seed", type=click.IntRange(0), default=D.seed, show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default=D.dtype,
              show_default=True)  # fmt: skip
@click.option("--norm", type=click.Choice(list(NORMS)), default=D.norm, show_default=True,
              help="normalize each hidden layer's pre-activation")  # fmt: skip
@click.option("--residual", is_flag=True, default=D.residual,
              help="skip connections around the hidden layers whose widths match")  # fmt: skip
@click.option("--residual-scale", type=NUMBER_OR_NAME, default=D.residual_scale, show_default=True,
              help="α of the residual branch: a number, or inv_sqrt_depth")  # fmt: skip
@click.option("--sharpness-every", type=click.IntRange(0), default=D.sharpness_every,
              show_default=True, help="records between measurements of the Hessian's top "
              "eigenvalue (0: none)")  # fmt: skip
@click.option("--jacobian-inputs", type=click.IntRange(0), default=D.jacobian_inputs,
              show_default=True, help="inputs of the Jacobian spectrum at init (0: none; "
              "BatchNorm nets: none)")  # fmt: skip
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("bpdiag-out"),
              show_default=True, help="folder for the run's figures")  # fmt: skip
def train(dataset, depth, width, activation, init, optimizer, lr, steps, batch_size, clip,
          clip_value, record_every, seed, dtype, norm, residual, residual_scale, sharpness_every,
          jacobian_inputs, out) -> None:  # fmt: skip
    """Train one configuration; print the verdict, its evidence and the per-layer gradients."""
    from rich.console import Console

    import bpdiag
    from bpdiag import data
    from bpdiag.diagnostics import figures
    from bpdiag.hooks import Progress
    from bpdiag.instruments import jacobian_inputs_for

    console = Console()
    try:
        ds = data.load(dataset, seed=seed)
        net = bpdiag.MLP([ds.n_features, *[width] * (depth - 1), ds.n_outputs],
                         activation=activation, loss=ds.loss, init=init, seed=seed, dtype=dtype,
                         norm=norm, residual=residual, residual_scale=residual_scale)  # fmt: skip
        progress = Progress(f"{dataset} depth {depth} {activation} {init}")
        hist = bpdiag.train(net, ds.X_train, ds.Y_train, optimizer=optimizer, lr=lr, steps=steps,
                            batch_size=batch_size, clip=clip, clip_value=clip_value,
                            record_every=record_every, seed=seed, hooks=[progress],
                            eval_data=(ds.X_test, ds.Y_test), sharpness_every=sharpness_every,
                            jacobian_inputs=jacobian_inputs_for(norm, jacobian_inputs))  # fmt: skip
        progress.close()
    except (ValueError, TypeError) as err:
        raise click.UsageError(str(err)) from None
    console.print(f"[bold]{net!r}[/]: {hist.steps_done} steps in {hist.train_seconds:.2f} s")
    print_verdict(console, hist.diagnosis, hist.summary)
    print_instruments(console, hist.summary)
    print_layer_table(console, hist.layers)
    out.mkdir(parents=True, exist_ok=True)
    pngs = figures.RunFigures().render(hist)
    for name, png in pngs.items():
        (out / name).write_bytes(png)
    console.print("figures: " + ", ".join(str(out / name) for name in pngs))


@main.command()
@click.option("--depth", type=click.IntRange(1), default=4, show_default=True)
@click.option("--width", type=click.IntRange(1), default=16, show_default=True)
@click.option(
    "--activation", type=click.Choice(list(ACTIVATIONS)), default="tanh", show_default=True
)
@click.option("--loss", type=click.Choice(list(LOSSES)), default=D.loss, show_default=True)
@click.option("--init", default="xavier_normal", show_default=True)
@click.option("--batch", type=click.IntRange(1), default=8, show_default=True)
@click.option("--per-layer", type=click.IntRange(1), default=20, show_default=True,
              help="entries checked per layer")  # fmt: skip
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--norm", type=click.Choice(list(NORMS)), default=D.norm, show_default=True)
@click.option("--residual", is_flag=True, default=D.residual)
def gradcheck(depth, width, activation, loss, init, batch, per_layer, seed, norm,
              residual) -> None:  # fmt: skip
    """Check backprop against central finite differences, layer by layer (float64)."""
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from bpdiag.gradcheck import gradcheck as check
    from bpdiag.model import MLP

    n_in, n_out = 5, (3 if loss == "ce" else 2)
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(batch, n_in))
    Y = {"ce": rng.integers(0, n_out, size=batch), "bce": rng.uniform(size=(batch, n_out)),
         "mse": rng.normal(size=(batch, n_out))}[loss]  # fmt: skip
    try:
        net = MLP([n_in, *[width] * (depth - 1), n_out], activation=activation, loss=loss,
                  init=init, seed=seed, norm=norm, residual=residual)  # fmt: skip
    except (ValueError, TypeError) as err:
        raise click.UsageError(str(err)) from None
    table = check(net, X, Y, per_layer=per_layer, seed=seed)
    out = Table(title=f"{net!r}: backprop vs central differences (h = 1e-6)")
    for col in ("layer", "checked", "max |error|", "relative error", "FD noise floor", ""):
        out.add_column(col, justify="right")
    for row in table.itertuples():
        out.add_row(str(row.layer), str(row.checked), f"{row.max_abs_error:.2e}",
                    f"{row.rel_error:.2e}", f"{row.fd_floor:.1e}",
                    "[green]ok" if row.ok else "[red]MISMATCH")  # fmt: skip
    Console().print(out)
    if not table["ok"].all():
        raise SystemExit(1)


VERDICT_STYLE = {"healthy": "green", "vanishing": "blue", "exploding": "red", "diverged": "bold red",
                 "dead": "dim", "saturated": "magenta"}  # fmt: skip


def print_verdict(console, diagnosis, summary: dict) -> None:
    """The label, its reason and the evidence (measured beside theory) as a table, with the
    run's outcome (final and test loss and accuracy) from ``summary``."""
    from rich.table import Table

    from bpdiag.schema import SUMMARY

    style = VERDICT_STYLE.get(diagnosis.label, "bold")
    console.print(f"verdict: [{style}]{diagnosis.label}[/] — {diagnosis.reason}")
    if diagnosis.headline:
        console.print(f"timeline: {diagnosis.headline}")
    for phase in diagnosis.phases:
        console.print(
            f"  steps {phase.start}–{phase.end}: {phase.label} (median δ₁/δ_L "
            f"{phase.delta_ratio_median:.3g})"
        )
    for name, text in diagnosis.flags.items():
        console.print(f"flag [bold]{name}[/]: {text}")
    table = Table(title="evidence", show_header=True)
    table.add_column("measure")
    table.add_column("value", justify="right")
    outcome = [s.name for s in SUMMARY if s.group == "outcome" and not s.evidence]
    rows = {**diagnosis.evidence, **{k: summary[k] for k in outcome if k in summary}}
    for key, value in rows.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)


def print_instruments(console, summary: dict) -> None:
    """The instruments' numbers (``schema.SUMMARY``, group "instruments") that were measured."""
    from rich.table import Table

    from bpdiag.schema import SUMMARY

    rows = [(s.name, summary[s.name], s.doc) for s in SUMMARY
            if s.group == "instruments" and math.isfinite(summary.get(s.name, math.nan))]  # fmt: skip
    if not rows:
        return
    table = Table(title="instruments", show_header=True)
    for col in ("measure", "value", "meaning"):
        table.add_column(col, justify="right" if col == "value" else "left")
    for name, value, doc in rows:
        table.add_row(name, f"{value:.4g}", doc)
    console.print(table)


def print_layer_table(console, layers) -> None:
    """Per-layer weight-gradient norm and error-signal RMS at init and at the end."""
    from rich.table import Table

    table = Table(title="per layer: ‖∂L/∂W_l‖ and RMS ‖δ_l‖, at init and at the end")
    for col in ("layer", "‖dW‖ init", "‖dW‖ end", "δ rms init", "δ rms end", "dead", "saturated"):
        table.add_column(col, justify="right")
    first = layers[layers.step == layers.step.min()].set_index("layer")
    last = layers[layers.step == layers.step.max()].set_index("layer")
    for layer in first.index:
        cells = (first.at[layer, "grad_norm_W"], last.at[layer, "grad_norm_W"],
                 first.at[layer, "delta_rms"], last.at[layer, "delta_rms"])  # fmt: skip
        extra = [f"{last.at[layer, c]:.0%}" if last.at[layer, c] == last.at[layer, c] else "-"
                 for c in ("frac_dead", "frac_saturated")]  # fmt: skip
        table.add_row(str(layer), *(f"{v:.3e}" for v in cells), *extra)
    console.print(table)


# ---------------------------------------------------------------- sweeps and the store


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"error: {message}", err=True)
    raise SystemExit(code)


def _interrupted(message: str, code: int) -> None:
    """Say why bpdiag stops and exit with ``code``; a further Ctrl-C while Python shuts down
    (Dask's threads, MLflow's atexit) ends it at once with the same status, not a traceback
    or a death by SIGINT."""

    def at_once(signum, frame):
        os._exit(code)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, at_once)
    if sys.stderr.isatty():  # the line after the terminal's "^C"
        click.echo(err=True)
    _fail(message, code)


def _counts_by_axis(console, table, axes: list[str]) -> None:
    from rich.table import Table

    from bpdiag.diagnostics.verdict import LABELS

    labels = [x for x in LABELS if x in set(table["label"])]
    for axis in axes:
        t = Table(title=f"verdicts by {axis}")
        t.add_column(axis)
        for label in labels:
            t.add_column(label, justify="right", style=VERDICT_STYLE.get(label, ""))
        for value, group in table.groupby(axis, sort=True):
            counts = group["label"].value_counts()
            t.add_row(str(value), *(str(int(counts.get(label, 0))) for label in labels))
        console.print(t)


@main.command()
@click.argument("spec", type=click.Path(path_type=Path))
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", help="default: sqlite:///mlflow.db")
@click.option(
    "--scheduler", envvar="DASK_SCHEDULER_ADDRESS", help="tcp://HOST:8786 (default: a LocalCluster)"
)
@click.option(
    "--workers", type=click.IntRange(1), help="LocalCluster workers (default: one per core)"
)
@click.option("--rerun", is_flag=True, help="run every config again, even those already FINISHED")
@click.option("--dry-run", is_flag=True, help="print the expanded runs and exit")
@click.option("--timings", is_flag=True, help="print where the time went")
@click.option("--max-runs", type=click.IntRange(1), help="allow more runs than the spec's max_runs")
@click.option("--max-run-gib", type=click.FloatRange(min=0, min_open=True),
              help="allow runs estimated above the spec's max_run_gib")  # fmt: skip
@click.option("--lease", type=click.FloatRange(min=1), default=60.0, show_default=True,
              help="seconds without a heartbeat after which another host's sweep is dead")  # fmt: skip
@click.option("--store-timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="seconds to wait for the store's first answer")  # fmt: skip
def sweep(spec, tracking_uri, scheduler, workers, rerun, dry_run, timings, max_runs,
          max_run_gib, lease, store_timeout) -> None:  # fmt: skip
    """Run the sweep in SPEC (a sweeps/*.yaml file) on Dask and log it to MLflow.

    Exit status: 0 when every run finished, 1 when some failed (or the store or cluster
    failed), 2 for bad input, 130 on Ctrl-C and 143 on SIGTERM (the store stays consistent:
    run the same command again to resume)."""
    from rich.console import Console
    from rich.table import Table

    from bpdiag.sweep.compare import varying_axes
    from bpdiag.sweep.config import SpecError, load_spec
    from bpdiag.sweep.tracking import DEFAULT_URI
    from bpdiag.sweep.tracking import tracking_uri as tracking_uri_of

    console = Console()
    try:
        parsed, runs = load_spec(spec, max_runs, max_run_gib)
    except SpecError as err:
        _fail(str(err))
    if dry_run:
        import pandas as pd

        df = pd.DataFrame([r.model_dump() | {"run_key": r.run_key} for r in runs])
        axes = varying_axes(df)
        table = Table(title=f"{spec}: {len(runs)} runs → experiment {parsed.experiment_name}")
        for col in ["#", "run_key", *axes, "seed"]:
            table.add_column(col)
        for i, row in df.iterrows():
            table.add_row(
                str(i + 1), row["run_key"], *(str(row[a]) for a in axes), str(row["seed"])
            )
        console.print(table)
        return
    outcome, failures = _run_sweep(console, spec, tracking_uri, scheduler, workers, rerun,
                                   max_runs=max_runs, max_run_gib=max_run_gib, lease=lease,
                                   store_timeout=store_timeout)  # fmt: skip
    others = f", {outcome.by_others} finished by another sweep" if outcome.by_others else ""
    console.print(f"[bold]{outcome.finished}[/] finished, [red]{outcome.failed}[/] failed, "
                  f"{outcome.skipped} skipped (already in the store){others}")  # fmt: skip
    if outcome.table is not None and not outcome.table.empty:
        _counts_by_axis(console, outcome.table, varying_axes(outcome.table)[:4])
    if timings:
        _print_timings(console, outcome.timings)
    uri = tracking_uri_of(tracking_uri)
    make_ui = "   (or: make ui)" if uri == DEFAULT_URI else ""
    console.print(f"\nOpen the MLflow UI:  [bold]bpdiag ui --tracking-uri {uri}[/]{make_ui}",
                  soft_wrap=True)  # fmt: skip
    console.print(f"then the runs table: [link={outcome.url}]{outcome.url}[/link]", soft_wrap=True)
    console.print(
        "and expand the sweep's parent run; filter e.g. tags.bpdiag.diagnosis = 'vanishing'"
    )
    _fail_if_any(failures, outcome.finished)


def _fail_if_any(failures: list[str], finished: int) -> None:
    """Exit 1 with a tally of the failed runs' errors, if any failed."""
    if failures:
        from collections import Counter

        tally = "\n".join(f"  {n}× {line}" for line, n in Counter(failures).most_common(5))
        _fail(f"{len(failures)} of {len(failures) + finished} runs failed (their "
              f"error.txt is in the store):\n{tally}", 1)  # fmt: skip


@main.command()
@click.argument("name")
@click.option("--report-only", is_flag=True, help="redraw the report from the store; no training")
@click.option("--tiny", is_flag=True, help="a smoke version: tiny nets, few steps, one seed")
@click.option("--dir", "root", type=click.Path(path_type=Path, file_okay=False),
              default="experiments", show_default=True, help="the folder of the studies")  # fmt: skip
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              help="where report.md goes (default: DIR/NAME; with --tiny, DIR/NAME/tiny)")  # fmt: skip
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", help="default: sqlite:///mlflow.db")
@click.option(
    "--scheduler", envvar="DASK_SCHEDULER_ADDRESS", help="tcp://HOST:8786 (default: a LocalCluster)"
)
@click.option(
    "--workers", type=click.IntRange(1), help="LocalCluster workers (default: one per core)"
)
def experiment(name, report_only, tiny, root, out, tracking_uri, scheduler, workers) -> None:
    """Run the study NAME (experiments/NAME: its sweeps, into MLflow like any sweep), then
    write its report.md and figures from the store, and the gallery experiments/README.md.

    Runs already in the store are not trained again. Studies: glorot2010, he2015,
    edge_of_chaos, normalization, clipping, optimizers."""
    import time

    from rich.console import Console

    from bpdiag.studies import run as studies

    console = Console()
    folder = root / name
    out = out or (folder / "tiny" if tiny else folder)
    try:
        specs = studies.spec_files(name, folder, tiny, out / "specs")
    except ValueError as err:
        _fail(str(err))
    if not report_only:
        t0, failures, trained_all = time.perf_counter(), [], True
        finished = 0
        for path in specs:
            outcome, failed = _run_sweep(console, path, tracking_uri, scheduler, workers, False)
            failures += failed
            finished += outcome.finished
            trained_all &= outcome.skipped == 0 and outcome.waiting == 0
        _fail_if_any(failures, finished)
        if trained_all:  # a resumed study's time would be only its last part's
            studies.record_time(specs, time.perf_counter() - t0, tracking_uri)
    try:
        with console.status(f"writing the report of {name} from the store"):
            report = studies.render(name, specs, out, tracking_uri)
    except ValueError as err:
        _fail(str(err), 1)
    console.print(f"wrote [bold]{report}[/] and its figures")
    if not tiny:
        console.print(f"and the gallery {studies.write_gallery(root)}")


def _run_sweep(console, spec, tracking_uri, scheduler, workers, rerun, **limits):
    """``run_sweep`` with a progress bar; every failure becomes one line and an exit status.
    Returns the outcome and the last line of each failed run's error."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from bpdiag.sweep import run_sweep
    from bpdiag.sweep.config import SpecError
    from bpdiag.sweep.tracking import StoreError

    # an MLflow server that stops answering mid-sweep: a failure within a minute, not ten
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("[red]{task.fields[failed]} failed"), TimeElapsedColumn(),
                   TextColumn("eta"), TimeRemainingColumn(), console=console)  # fmt: skip
    task = {}

    failures: list[str] = []  # the last line of each failed run's error

    def on_start(outcome, n_todo):
        others = (f", {outcome.waiting} of them after another sweep that is running them now"
                  if outcome.waiting else "")  # fmt: skip
        console.print(f"sweep [bold]{outcome.spec.name}[/]: {len(outcome.runs)} runs, "
                      f"{outcome.skipped} already FINISHED in {outcome.spec.experiment_name}; "
                      f"running {n_todo}{others}")  # fmt: skip
        bar.start()
        task["id"] = bar.add_task("starting workers", total=n_todo, failed=0)

    def on_result(result):
        bar.update(task["id"], advance=1, description=f"{result.config.name[:40]:40s}",
                   failed=bar.tasks[0].fields["failed"] + (result.status != "FINISHED"))  # fmt: skip
        if result.status != "FINISHED":
            lines = (result.error or "").strip().splitlines() or ["unknown error"]
            failures.append(lines[-1])
            bar.console.print(f"[red]FAILED[/] {result.config.name}: {lines[-1]}")

    received: list[int] = []
    try:
        with _signals_as_interrupts(received):
            outcome = run_sweep(spec, tracking_uri, scheduler, workers, rerun, on_start,
                                on_result, **limits)  # fmt: skip
    except SpecError as err:
        _fail(str(err))
    except KeyboardInterrupt as err:
        bar.stop()
        code = 128 + getattr(err, "signum", signal.SIGINT)
        _interrupted("interrupted: finished runs are in the store; run the same command "
                     "again to resume", code)  # fmt: skip
    except StoreError as err:
        bar.stop()
        _fail(str(err), 1)
    except Exception as err:  # store or cluster unreachable, ...: one line, not a traceback
        bar.stop()
        if received:  # the interrupt cut a call short, and it raised an error of its own
            _interrupted("interrupted: finished runs are in the store; run the same command "
                         "again to resume", 128 + received[0])  # fmt: skip
        _fail(f"{type(err).__name__}: {err}", 1)
    finally:
        bar.stop()
    return outcome, failures


class _Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised in the main thread so that the sweep cleans up."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def _signals_as_interrupts(received: list[int] | None = None):
    """SIGINT and SIGTERM raise ``_Interrupted`` (the sweep marks what it leaves KILLED and
    stops its workers), after the store call in progress if any (``sweep.shield``); a second
    signal, during that call or the clean-up, exits at once, as the next sweep recovers the
    store anyway. Each signal's number is appended to ``received``.

    Python swallows an exception raised where it cannot propagate (a gc callback, a
    ``__del__``: "Exception ignored in …"); there the first signal is caught by
    ``sys.unraisablehook`` and delivered again, so one Ctrl-C is never lost."""
    from bpdiag.sweep import shield

    swallowed: list[int] = []

    def first(signum, frame):
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, again)
        if received is not None:
            received.append(signum)
        shield.interrupt(_Interrupted(signum))  # a store call in progress ends first

    def again(signum, frame):
        if swallowed:  # the first one, delivered again where it can propagate
            shield.interrupt(_Interrupted(swallowed.pop()))
            return
        os.write(2, b"\nerror: interrupted again: stopped at once; the next sweep of this store "
                    b"marks what this one left as KILLED\n")  # fmt: skip
        os._exit(128 + signum)

    def unraisable(info) -> None:
        if isinstance(info.exc_value, _Interrupted):
            swallowed.append(info.exc_value.signum)
            # a real signal to the main thread (it wakes a blocking call) once this hook and
            # the code that swallowed have returned; swallowed again, it comes back again
            main = threading.main_thread().ident
            threading.Timer(0.05, signal.pthread_kill, (main, info.exc_value.signum)).start()
        else:
            old_hook(info)

    # a process that exits at once leaves multiprocessing's semaphores to its resource tracker,
    # a child that would warn about them; the workers and the tracker inherit this
    warnings = os.environ.get("PYTHONWARNINGS")
    quiet = "ignore:resource_tracker:UserWarning"
    os.environ["PYTHONWARNINGS"] = f"{warnings},{quiet}" if warnings else quiet
    old = {sig: signal.signal(sig, first) for sig in (signal.SIGINT, signal.SIGTERM)}
    old_hook, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        yield
    finally:
        sys.unraisablehook = old_hook
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if warnings is None:
            os.environ.pop("PYTHONWARNINGS", None)
        else:
            os.environ["PYTHONWARNINGS"] = warnings


def _print_timings(console, t: dict) -> None:
    train, workers = t.get("train_s", 0.0), t.get("workers", 1) or 1
    ideal = train / workers
    lines = [
        f"wall time             {t.get('wall_s', 0):8.2f} s",
        f"  start-up + warm-up  {t.get('startup_s', 0):8.2f} s (warm-up {t.get('warm_s', 0):.2f} s)",
        f"  runs (to last log)  {t.get('run_phase_s', 0):8.2f} s",
        f"  finish (parent)     {t.get('finish_s', 0):8.2f} s",
        f"training, all runs    {train:8.2f} s on {workers} workers → {ideal:.2f} s if perfectly packed",
        f"worker time, all runs {t.get('worker_s', 0):8.2f} s (data, train, diagnose, figures)",
        f"MLflow logging        {t.get('log_s', 0):8.2f} s (driver)",
    ]
    if ideal > 0:
        lines.append(f"overhead on training: runs phase {t.get('run_phase_s', 0) / ideal - 1:+.0%}, "
                     f"end to end {t.get('wall_s', 0) / ideal - 1:+.0%}")  # fmt: skip
    console.print("\n".join(lines))


def _tracker(uri):
    """A reader of an existing store: a SQLite file that is not there is an error, not a new
    empty store left in the current folder."""
    from bpdiag.sweep.tracking import Tracker, sqlite_path

    tracker = Tracker(uri)
    if tracker.uri.lower().startswith("sqlite"):
        path = sqlite_path(tracker.uri)
        if path is not None and not path.exists():
            _fail(f"no MLflow store at {path} ({tracker.uri}); run a sweep first, or pass "
                  "--tracking-uri / set MLFLOW_TRACKING_URI", 1)  # fmt: skip
    return tracker


@main.command()
@click.argument("experiment")
@click.option(
    "--by", default="optimizer,clip", show_default=True, help="comma-separated RunConfig fields"
)
@click.option("--metric", default="final_loss", show_default=True)
@click.option(
    "--all", "use_all", is_flag=True, help="group all runs, not only those that differ just in --by"
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    help="write a PNG: loss curves (two --by axes) or bars",
)
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI")
def compare(experiment, by, metric, use_all, plot, tracking_uri) -> None:
    """Compare the finished runs of EXPERIMENT: mean ± std over seeds and verdict counts."""
    from rich.console import Console
    from rich.table import Table

    from bpdiag.sweep.compare import aggregate, comparable
    from bpdiag.sweep.tracking import compare_url, ui_url

    console = Console()
    tracker = _tracker(tracking_uri)
    exp_id = tracker.experiment_id(experiment, create=False)
    if exp_id is None:
        names = sorted(e.name for e in tracker.client.search_experiments())
        _fail(
            f"no experiment {experiment!r} in {tracker.uri}; there are: {', '.join(names) or 'none'}"
        )
    df = tracker.table(exp_id)
    if df.empty:
        _fail(f"experiment {experiment!r} has no FINISHED runs yet")
    axes = [a.strip() for a in by.split(",") if a.strip()]
    try:
        subset = df if use_all else comparable(df, axes)
        table = aggregate(subset, axes, metric)
    except ValueError as err:
        _fail(str(err))
    if len(subset) < len(df):
        console.print(f"comparing the {len(subset)} runs that differ only in {', '.join(axes)} and seed "
                      f"({len(df) - len(subset)} others left out; --all to include them)")  # fmt: skip
    t = Table(title=f"{experiment}: {metric} by {', '.join(axes)}")
    counts = [c for c in table.columns if c not in (*axes, "n", "mean", "std")]
    for col in axes:
        t.add_column(str(col), no_wrap=True)
    t.add_column(f"{metric} (mean ± std)", justify="right", no_wrap=True)
    t.add_column("verdicts")  # one column, so that the table fits 80 columns
    for _, row in table.iterrows():
        verdicts = " · ".join(_styled(f"{int(row[c])} {c}", str(c)) for c in counts if row[c])
        t.add_row(*(str(row[c]) for c in axes), _mean_std(row), verdicts)
    console.print(t)
    if "diverged" in table and table["diverged"].gt(0).any():
        console.print(f"(a diverged run has no {metric}: its loss overflowed; the mean is over "
                      "the others)")  # fmt: skip
    if len(subset) <= MAX_COMPARED:
        url = compare_url(exp_id, list(subset["run_id"]))
        console.print(f"side by side in the MLflow UI: [link={url}]{url}[/link]", soft_wrap=True)
    else:
        url = ui_url(exp_id)
        console.print(f"the runs in the MLflow UI: [link={url}]{url}[/link]", soft_wrap=True)
    if plot:
        from bpdiag.diagnostics.figures import save
        from bpdiag.sweep import figures

        if len(axes) == 2:
            histories = {r: tracker.loss_history(r) for r in subset["run_id"]}
            fig = figures.loss_curves(subset, histories, tuple(axes))
        else:
            fig = figures.metric_bars(table, axes, metric)
        save(fig, plot)
        console.print(f"wrote {plot}")


def _styled(text: str, label: str) -> str:
    style = VERDICT_STYLE.get(label)
    return f"[{style}]{text}[/{style}]" if style else text


MAX_COMPARED = 20  # runs on one MLflow compare page (its URL names each; the page grows slow)


@main.command()
@click.argument("run_id")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI")
def diagnose(run_id, tracking_uri) -> None:
    """Print the verdict and evidence of a logged run (RUN_ID from the UI or `compare`)."""
    import json

    from rich.console import Console
    from rich.markup import escape

    from bpdiag.diagnostics.verdict import Diagnosis, Phase, Thresholds
    from bpdiag.schema import SUMMARY, Tag
    from bpdiag.sweep.tracking import ui_url

    console = Console()
    tracker = _tracker(tracking_uri)
    run = _find_run(tracker, run_id)
    run_id, tags = run.info.run_id, run.data.tags
    if Tag.DIAGNOSIS not in tags:
        _fail(
            f"run {run_id} has no bpdiag diagnosis (status {run.info.status}; a sweep's parent run?)"
        )
    phases, flags = (), {}
    try:
        text = tracker.client.download_artifacts(run_id, "diagnosis.json")
        logged = json.loads(Path(text).read_text())
        evidence = {k: math.nan if v is None else float(v)  # JSON null: NaN
                    for k, v in logged["evidence"].items()}  # fmt: skip
        flags = logged.get("flags", {})
        phases = tuple(
            Phase(p["label"], p["start"], p["end"], math.nan if p["delta_ratio_median"] is None
                  else float(p["delta_ratio_median"]))
            for p in logged.get("phases", [])
        )  # fmt: skip
    except Exception:
        evidence = {s.name: s.from_mlflow(run.data.metrics) for s in SUMMARY if s.evidence}
        evidence = {k: math.nan if v is None else v for k, v in evidence.items()}
    console.print(f"run [bold]{escape(run.info.run_name)}[/] ({run_id}), status {run.info.status}")
    console.print(
        "params: "
        + ", ".join(f"{k}={v}" for k, v in sorted(run.data.params.items()) if v != "None")
    )
    summary = {s.name: s.from_mlflow(run.data.metrics) for s in SUMMARY}
    summary = {k: v for k, v in summary.items() if v is not None}
    print_verdict(
        console,
        Diagnosis(
            tags[Tag.DIAGNOSIS], tags.get(Tag.REASON, ""), evidence, Thresholds(), phases, flags
        ),
        summary,
    )
    print_instruments(console, summary)
    console.print(
        f"in the UI (bpdiag ui): {ui_url(run.info.experiment_id, run_id)}", soft_wrap=True
    )


def _mean_std(row) -> str:
    """'0.592 ± 0.052 (n=2)'; '–' where no run of the group has the metric."""
    n, mean, std = int(row["n"]), row["mean"], row["std"]
    if n == 0 or not math.isfinite(mean):
        return "–"
    spread = f" ± {std:.2g}" if n > 1 and math.isfinite(std) else ""
    return f"{mean:.3g}{spread} (n={n})"


def _find_run(tracker, run_id: str):
    """The run with this ID, or the one run whose ID starts with it (as the UI shortens them)."""
    try:
        return tracker.client.get_run(run_id)
    except Exception:
        pass
    prefix = run_id.strip().lower()
    found = []
    if len(prefix) >= 4:
        for exp in tracker.client.search_experiments():
            found += [r for r in tracker.runs(exp.experiment_id)
                      if r.info.run_id.startswith(prefix)]  # fmt: skip
    if len(found) == 1:
        return found[0]
    many = f" ({len(found)} runs start with it; give more of the ID)" if found else ""
    _fail(f"no run {run_id!r} in {tracker.uri}{many}")


@main.command()
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True)
@click.option("--experiment", help="print this experiment's runs-table address")
def ui(tracking_uri, port, experiment) -> None:
    """Start the MLflow UI on 127.0.0.1 for the same store and print where the runs are."""
    import shutil
    import subprocess
    import sys

    from bpdiag.sweep.tracking import tracking_uri as tracking_uri_of
    from bpdiag.sweep.tracking import ui_url

    uri = tracking_uri_of(tracking_uri)
    tracker = _tracker(uri)
    exps = [
        e
        for e in tracker.client.search_experiments()
        if e.name != "Default" or experiment == "Default"
    ]
    if experiment:
        exps = [e for e in exps if e.name == experiment]
        if not exps:
            _fail(f"no experiment {experiment!r} in {uri}")
    import socket

    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            _fail(f"port {port} on 127.0.0.1 is taken (an MLflow UI already running?); "
                  "choose another with --port", 1)  # fmt: skip
    click.echo(f"MLflow UI for {uri} on http://127.0.0.1:{port}")
    for e in exps:
        click.echo(f"  {e.name}: {ui_url(e.experiment_id, port=port)}")
    mlflow_exe = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    cmd = [mlflow_exe, "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)]
    raise SystemExit(subprocess.call(cmd))
