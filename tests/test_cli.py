"""The ``bpdiag`` command, through click's CliRunner."""

import pytest
from click.testing import CliRunner

from bpdiag.cli import main


def test_help_lists_commands():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0 and "train" in result.output


def test_train_prints_verdict_and_writes_figures(tmp_path):
    args = ["train", "--depth", "12", "--width", "32", "--activation", "sigmoid", "--init",
            "xavier_normal", "--optimizer", "sgd", "--lr", "0.1", "--steps", "50",
            "--out", str(tmp_path / "figs")]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # undo rich's line wrapping
    assert "verdict: vanishing" in text
    assert "grad_ratio_first_last_theory" in text and "test_accuracy" in text
    assert (tmp_path / "figs" / "gradient_flow.png").exists()
    assert (tmp_path / "figs" / "grad_norm_vs_depth.png").exists()


def test_bad_values_exit_2_with_a_message(tmp_path):
    result = CliRunner().invoke(main, ["train", "--init", "glorot", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "unknown init 'glorot'" in " ".join(result.output.split())
    result = CliRunner().invoke(main, ["train", "--clip", "norm", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "needs clip_value" in " ".join(result.output.split())
    result = CliRunner().invoke(main, ["train", "--activation", "swish"])
    assert result.exit_code == 2 and "swish" in result.output


def test_gradcheck_command_passes_for_every_loss():
    for loss in ("bce", "ce", "mse"):
        result = CliRunner().invoke(main, ["gradcheck", "--loss", loss, "--activation", "gelu"])
        assert result.exit_code == 0, result.output
        assert "ok" in result.output and "MISMATCH" not in result.output


def test_train_shows_the_batchnorm_explosion_and_the_skip_that_removes_it(tmp_path):
    base = ["train", "--depth", "30", "--activation", "relu", "--norm", "batchnorm", "--steps",
            "20", "--out", str(tmp_path / "figs")]  # fmt: skip
    plain = CliRunner().invoke(main, base)
    skip = CliRunner().invoke(main, [*base, "--residual", "--residual-scale", "inv_sqrt_depth"])
    assert plain.exit_code == 0 and skip.exit_code == 0, plain.output + skip.output
    assert "verdict: exploding" in " ".join(plain.output.split())
    assert "verdict: healthy" in " ".join(skip.output.split())
    bad = CliRunner().invoke(main, [*base, "--residual-scale", "half"])
    assert bad.exit_code == 2 and "unknown residual_scale 'half'" in " ".join(bad.output.split())


def test_gradcheck_command_takes_norm_and_residual():
    result = CliRunner().invoke(main, ["gradcheck", "--norm", "layernorm", "--residual"])
    assert result.exit_code == 0 and "MISMATCH" not in result.output


def test_a_ctrl_c_that_lands_in_a_finalizer_is_not_lost():
    """Python swallows what a ``__del__`` (or a gc callback) raises; the sweep's handler then
    raises the interrupt again where it propagates, instead of waiting for a second Ctrl-C."""
    import os
    import signal
    import time

    from bpdiag import cli

    class SignalsWhileFinalized:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            sum(range(10_000))  # the handler runs here, inside __del__, and is swallowed

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt) as caught, cli._signals_as_interrupts():
        SignalsWhileFinalized()
        time.sleep(2)  # delivered again here
    assert caught.value.signum == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) == before  # restored


def _python(*lines: str):
    """A fresh Python process running ``lines``; its status and output."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", "\n".join(lines)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def test_a_ctrl_c_after_the_interrupted_line_keeps_the_status():
    """A second Ctrl-C that lands once the interrupted sweep said so, while Python shuts down,
    exits with the same status at once (it killed the process by SIGINT: status -2)."""
    done = _python("import os, signal, time",
                   "from bpdiag import cli",
                   "try:",
                   "    cli._interrupted('interrupted', 130)",
                   "finally:",
                   "    os.kill(os.getpid(), signal.SIGINT)",
                   "    time.sleep(5)")  # fmt: skip
    assert done.returncode == 130, done.stderr[-2000:]
    assert done.stderr.strip() == "error: interrupted", done.stderr[-2000:]


def test_a_ctrl_c_while_python_tears_down_keeps_the_status():
    """A Ctrl-C once the command has ended, while Python tears its modules down (after it
    dropped its signal handlers), leaves the command's status (it killed it by SIGINT)."""
    done = _python("import os, signal, sys, time",
                   "class Late:",
                   "    def __del__(self):  # runs as __main__ is torn down",
                   "        os.kill(os.getpid(), signal.SIGINT)",
                   "        time.sleep(2)",
                   "late = Late()",
                   "sys.argv = ['bpdiag', '--version']",
                   "from bpdiag._entry import main",
                   "main()")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("after", ["numpy", "llvmlite"])
def test_ctrl_c_while_the_command_loads_or_runs_ends_with_one_line(tmp_path, after):
    """A terminal's Ctrl-C (SIGINT to the process group) while the console script imports its
    modules, or once a command runs, gives one line and status 130, never a traceback."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    script = Path(sys.executable).parent / "bpdiag"
    proc = subprocess.Popen([script, "train", "--steps", "100000", "--out", str(tmp_path)],
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    maps, deadline = Path(f"/proc/{proc.pid}/maps"), time.time() + 60
    while proc.poll() is None and time.time() < deadline:
        try:  # a module's shared library mapped: that import has begun
            if after in maps.read_text():
                break
        except OSError:
            pass
        time.sleep(0.002)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    os.killpg(proc.pid, signal.SIGINT)
    err = proc.communicate(timeout=30)[1]
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert err.strip() == "error: interrupted", err[-2000:]
