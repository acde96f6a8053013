"""An interrupt waits for the shielded block (a store call) the main thread is in."""

import os
import signal
import threading
import time

import pytest

from bpdiag import cli
from bpdiag.sweep.shield import interrupt, shielded


class Stop(KeyboardInterrupt):
    pass


def test_outside_a_shielded_block_the_interrupt_is_raised_at_once():
    with pytest.raises(Stop):
        interrupt(Stop())


def test_inside_one_it_is_raised_where_the_outermost_block_ends():
    done = []
    with pytest.raises(Stop):
        with shielded():
            with shielded():
                interrupt(Stop())
                done.append("inner")
            done.append("outer")  # the inner block's end does not raise
    assert done == ["inner", "outer"]
    with shielded():  # nothing left pending
        pass


def test_other_threads_are_not_shielded():
    caught = []

    def other():
        try:
            with shielded():
                interrupt(Stop())
        except Stop:
            caught.append("at once")

    with shielded():
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert caught == ["at once"]


def test_a_signal_during_a_shielded_block_lets_it_finish_first():
    """The sweep's handler (``cli._signals_as_interrupts``): SIGTERM while a store call runs
    raises after it; the block is not cut short."""
    done = []
    with pytest.raises(KeyboardInterrupt) as caught, cli._signals_as_interrupts():
        with shielded():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)  # the handler runs here, and defers
            done.append("written")
        done.append("after")
    assert done == ["written"] and caught.value.signum == signal.SIGTERM
