"""The ``bpdiag`` command line (click). Only this module prints."""

from __future__ import annotations

from pathlib import Path

import click

from bpdiag.activations import ACTIVATIONS
from bpdiag.clipping import CLIPPING
from bpdiag.optim import OPTIMIZERS


def _dataset_names() -> list[str]:
    from bpdiag.data import DATASETS

    return list(DATASETS)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bpdiag")
def main() -> None:
    """bpdiag: train deep MLPs and see what their gradients do."""


@main.command()
@click.option(
    "--dataset", type=click.Choice(_dataset_names()), default="spirals", show_default=True
)
@click.option("--depth", type=click.IntRange(1), default=6, show_default=True, help="weight layers")
@click.option("--width", type=click.IntRange(1), default=32, show_default=True)
@click.option(
    "--activation", type=click.Choice(list(ACTIVATIONS)), default="relu", show_default=True
)
@click.option("--init", default="he_normal", show_default=True,
              help="xavier_normal, he_normal, lecun_normal, orthogonal, normal_<std>, ...")  # fmt: skip
@click.option("--optimizer", type=click.Choice(list(OPTIMIZERS)), default="adam", show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--steps", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--clip", type=click.Choice(list(CLIPPING)), default="none", show_default=True)
@click.option("--clip-value", type=float, default=None)
@click.option("--record-every", type=click.IntRange(1), default=10, show_default=True)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option(
    "--dtype", type=click.Choice(["float32", "float64"]), default="float64", show_default=True
)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("bpdiag-out"),
              show_default=True, help="folder for gradient_flow.png and grad_norm_vs_depth.png")  # fmt: skip
def train(dataset, depth, width, activation, init, optimizer, lr, steps, batch_size, clip,
          clip_value, record_every, seed, dtype, out) -> None:  # fmt: skip
    """Train one configuration; print the verdict, its evidence and the per-layer gradients."""
    from rich.console import Console

    import bpdiag
    from bpdiag import data, plots
    from bpdiag.hooks import Progress

    console = Console()
    try:
        ds = data.load(dataset, seed=seed)
        net = bpdiag.MLP([ds.n_features, *[width] * (depth - 1), ds.n_outputs],
                         activation=activation, loss=ds.loss, init=init, seed=seed, dtype=dtype)  # fmt: skip
        progress = Progress(f"{dataset} depth {depth} {activation} {init}")
        hist = bpdiag.train(net, ds.X_train, ds.Y_train, optimizer=optimizer, lr=lr, steps=steps,
                            batch_size=batch_size, clip=clip, clip_value=clip_value,
                            record_every=record_every, seed=seed, hooks=[progress],
                            eval_data=(ds.X_test, ds.Y_test))  # fmt: skip
        progress.close()
    except (ValueError, TypeError) as err:
        raise click.UsageError(str(err)) from None
    console.print(f"[bold]{net!r}[/]: {hist.steps_done} steps in {hist.train_seconds:.2f} s")
    print_verdict(console, hist.diagnosis, hist.summary)
    print_layer_table(console, hist.layers)
    out.mkdir(parents=True, exist_ok=True)
    plots.save(plots.gradient_flow(hist), out / "gradient_flow.png")
    plots.save(plots.norm_vs_depth(hist), out / "grad_norm_vs_depth.png")
    console.print(f"figures: {out / 'gradient_flow.png'}, {out / 'grad_norm_vs_depth.png'}")


VERDICT_STYLE = {"healthy": "green", "vanishing": "blue", "exploding": "red", "diverged": "bold red",
                 "dead": "dim", "saturated": "magenta"}  # fmt: skip


def print_verdict(console, diagnosis, summary: dict) -> None:
    """The label, its reason and the evidence (measured beside theory) as a table."""
    from rich.table import Table

    style = VERDICT_STYLE.get(diagnosis.label, "bold")
    console.print(f"verdict: [{style}]{diagnosis.label}[/] — {diagnosis.reason}")
    table = Table(title="evidence", show_header=True)
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in {
        **diagnosis.evidence,
        **{k: v for k, v in summary.items() if "accuracy" in k},
    }.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
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
