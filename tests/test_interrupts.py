"""A signal that lands inside a ``__del__`` still stops a conversion (CI caught one lost).

Python swallows an exception raised in a finalizer (it prints "Exception ignored in ..."):
a Ctrl-C that arrived while the garbage collector ran a library's ``__del__`` was lost, and
the conversion ran to the end with status 0. The handler now defers it to the next
check point between cases, or to the end of the block.
"""

from __future__ import annotations

import os
import signal

import pytest

from pgps_data.interrupts import Interrupted, interrupts_as_exit, raise_if_interrupted


class _SignalsWhileFinalized:
    def __init__(self, sig: int):
        self.sig = sig

    def __del__(self) -> None:
        os.kill(os.getpid(), self.sig)
        for _ in range(1000):  # the handler runs between these bytecodes, inside __del__
            pass


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_inside_a_finalizer_is_raised_at_the_next_check(
        sig: int, code: int, capfd: pytest.CaptureFixture[str]) -> None:
    reached = []
    with pytest.raises(Interrupted) as stop:
        with interrupts_as_exit("prog", "stopped"):
            obj = _SignalsWhileFinalized(sig)
            del obj  # the handler fires in __del__: nothing may be raised there
            reached.append("after the finalizer")
            raise_if_interrupted()
            reached.append("after the check")
    assert stop.value.code == code
    assert reached == ["after the finalizer"]
    assert "Exception ignored" not in capfd.readouterr().err


def test_a_deferred_signal_is_raised_when_the_block_ends_without_a_check() -> None:
    with pytest.raises(Interrupted) as stop:
        with interrupts_as_exit("prog", "stopped"):
            obj = _SignalsWhileFinalized(signal.SIGINT)
            del obj
    assert stop.value.code == 130


def test_a_signal_outside_a_finalizer_raises_where_it_lands() -> None:
    reached = []
    with pytest.raises(Interrupted) as stop:
        with interrupts_as_exit("prog", "stopped"):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10**6):
                pass
            reached.append("not stopped")
    assert stop.value.code == 143 and reached == []


def test_no_signal_no_interrupt_and_handlers_restored() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with interrupts_as_exit("prog", "stopped"):
        raise_if_interrupted()
    raise_if_interrupted()
    assert signal.getsignal(signal.SIGTERM) is before
