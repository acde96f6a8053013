"""The ``bpdiag`` command line (click). Only this module prints."""

from __future__ import annotations

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
def train(dataset, depth, width, activation, init, optimizer, lr, steps, batch_size, clip,
          clip_value, record_every, seed, dtype) -> None:  # fmt: skip
    """Train one configuration and print how its gradients behaved, layer by layer."""
    from rich.console import Console
    from rich.table import Table

    import bpdiag
    from bpdiag import data
    from bpdiag.hooks import Progress

    console = Console()
    try:
        ds = data.load(dataset, seed=seed)
        net = bpdiag.MLP([ds.n_features, *[width] * (depth - 1), ds.n_outputs],
                         activation=activation, loss=ds.loss, init=init, seed=seed, dtype=dtype)  # fmt: skip
        progress = Progress(f"{dataset} depth {depth} {activation} {init}")
        hist = bpdiag.train(net, ds.X_train, ds.Y_train, optimizer=optimizer, lr=lr, steps=steps,
                            batch_size=batch_size, clip=clip, clip_value=clip_value,
                            record_every=record_every, seed=seed, hooks=[progress])  # fmt: skip
        progress.close()
    except (ValueError, TypeError) as err:
        raise click.UsageError(str(err)) from None
    test_loss, test_acc = net.evaluate(ds.X_test, ds.Y_test)
    first, last = hist.steps.iloc[0], hist.steps.iloc[-1]
    console.print(f"[bold]{net!r}[/] trained {hist.steps_done} steps in {hist.train_seconds:.2f} s")
    if hist.stopped_by == "nonfinite":
        console.print(f"[red]non-finite loss or gradient at step {hist.diverged_step}[/]")
    console.print(f"loss {first['loss']:.4g} → {last['loss']:.4g}; "
                  f"train accuracy {last['accuracy']:.3f}; test accuracy {test_acc:.3f}")  # fmt: skip
    table = Table(title="per-layer gradient norms ‖∂L/∂W_l‖ and error signal RMS ‖δ_l‖")
    for col in ("layer", "‖dW‖ at init", "‖dW‖ at end", "δ rms at init", "δ rms at end"):
        table.add_column(col, justify="right")
    layers = hist.layers
    init_rows = layers[layers.step == first["step"]].set_index("layer")
    end_rows = layers[layers.step == last["step"]].set_index("layer")
    for layer in init_rows.index:
        table.add_row(str(layer), *(f"{v:.3e}" for v in (
            init_rows.at[layer, "grad_norm_W"], end_rows.at[layer, "grad_norm_W"],
            init_rows.at[layer, "delta_rms"], end_rows.at[layer, "delta_rms"])))  # fmt: skip
    console.print(table)
