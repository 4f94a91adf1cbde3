"""Stop or checkpoint at a step boundary when the scheduler signals, instead of dying mid-step.

SLURM sends SIGTERM when a job is cancelled or runs out of time (SIGKILL follows after
KillWait, 30 s by default), and SIGUSR2 ahead of a time limit or a preemption
(`--signal=USR2@120`, which submitit asks for). The handlers here only record the request;
the training loop acts on it at its next step boundary:

    preemption.install()
    for step in ...:
        train_step()
        request = preemption.poll()        # on every rank: ranks agree on the same step
        if request.checkpoint:
            save_checkpoint()
            preemption.hand_over()         # does not return
        if request.stop:
            raise preemption.Stopped(f"... at step {step}")
    preemption.uninstall()

SIGTERM means stop: no new checkpoint is started, the last sealed one is what a resumed run
continues from. SIGUSR2 means checkpoint, then hand over to whatever handled SIGUSR2 before
`install()` — submitit's handler, which requeues the job and exits. Without such a handler
the process exits with EXIT_PREEMPTED, for a parent process to requeue.

Ctrl-C (SIGINT) from the terminal is a stop too, said on stderr at once; a second Ctrl-C does
not wait for the step to end: it raises `Interrupted` wherever the process is. Outside the
training loop, `stop_at_once(...)` makes SIGTERM and Ctrl-C raise `Stopped` with a message
that says what was done (the final evaluation: the model is saved, the evaluation is not).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional

from tokalign.errors import UserError

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: checkpointed for preemption, run it again to continue
SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)
EXIT_INTERRUPTED = 130  # the shell's status for a command ended by Ctrl-C


class Stopped(UserError):
    """Training stopped at a step boundary on SIGTERM (cancelled or out of time) or Ctrl-C."""


class Interrupted(Stopped):
    """A second Ctrl-C: stopped at once, mid-step."""

    exit_code = EXIT_INTERRUPTED


@dataclass(frozen=True)
class Request:
    stop: bool = False
    checkpoint: bool = False
    by_user: bool = False  # the stop is a Ctrl-C, not a scheduler's SIGTERM

    def stopped(self, where: str, then: str) -> Stopped:
        """`stopped by SIGTERM at step 5 (cancelled or out of time); <then>`, or by Ctrl-C (exit status 130)."""
        where = f" {where}" if where else ""
        err = Stopped(
            f"stopped by Ctrl-C{where}; {then}"
            if self.by_user
            else f"stopped by SIGTERM{where} (cancelled or out of time); {then}"
        )
        if self.by_user:
            err.exit_code = EXIT_INTERRUPTED
        return err

    def __bool__(self) -> bool:
        return self.stop or self.checkpoint


_previous: dict[int, Any] = {}
_received: dict[int, bool] = {}


_interrupts = [0]


def _record(signum: int, frame: Any) -> None:
    if signum == signal.SIGINT:
        _interrupts[0] += 1
        if _interrupts[0] > 1:
            raise Interrupted(
                "interrupted twice: stopped at once, mid-step, with no new checkpoint; resume=auto "
                "continues from the last sealed one"
            )
        os.write(2, b"\ntokalign: Ctrl-C: stopping at the next step boundary (Ctrl-C again stops at once)\n")
    _received[signum] = True


def install() -> bool:
    """Record SIGTERM / SIGUSR2 instead of acting on them. Main thread only (False elsewhere);
    installing twice keeps the first handlers to hand over to."""
    if threading.current_thread() is not threading.main_thread():
        return False
    for sig in SIGNALS:
        if sig not in _previous:
            _previous[sig] = signal.signal(sig, _record)
    return True


def installed() -> bool:
    return bool(_previous)


def requests() -> Request:
    """What this process has received and no poll() has returned yet (this rank alone)."""
    interrupted = _received.get(signal.SIGINT, False)
    return Request(
        stop=_received.get(signal.SIGTERM, False) or interrupted,
        checkpoint=_received.get(signal.SIGUSR2, False),
        by_user=interrupted,
    )


def poll(sync: Optional[Callable[[list[int]], list[int]]] = None) -> Request:
    """The request to act on at this step boundary, the same on every rank; it is consumed
    (the caller acts on it now).

    `sync` max-reduces the flags over ranks; by default torch.distributed when a process group
    is up (then every rank must call poll at the same step), else this process alone."""
    mine = requests()
    _received.clear()
    flags = [int(mine.stop), int(mine.checkpoint)]
    agreed = (sync or _max_over_ranks)(flags)
    return Request(stop=bool(agreed[0]), checkpoint=bool(agreed[1]), by_user=mine.by_user)


def _max_over_ranks(flags: list[int]) -> list[int]:
    import sys

    dist = sys.modules.get("torch.distributed")  # only if the training code imported it
    if dist is None or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return flags
    import torch

    device = "cpu"
    if dist.get_backend() == "nccl":
        device = f"cuda:{torch.cuda.current_device()}"
    t = torch.tensor(flags, dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [int(x) for x in t.tolist()]


def hand_over() -> None:
    """Call once the checkpoint is sealed: pass SIGUSR2 on to the handler found at install()
    (submitit: requeue, then exit). Exits with EXIT_PREEMPTED if there is none or it returns."""
    previous = _previous.get(signal.SIGUSR2)
    uninstall()
    if callable(previous):
        previous(signal.SIGUSR2, None)
    raise SystemExit(EXIT_PREEMPTED)


def uninstall() -> None:
    """Put the previous handlers back (end of training, or an error). A signal no poll() has
    returned is passed on to them, as if it had arrived now."""
    pending = [sig for sig in SIGNALS if _received.get(sig)]
    _received.clear()
    _interrupts[0] = 0
    if threading.current_thread() is not threading.main_thread():
        return
    for sig, handler in list(_previous.items()):
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    _previous.clear()
    for sig in pending:
        signal.raise_signal(sig)


@contextlib.contextmanager
def stop_at_once(message: str):
    """While inside, SIGTERM and Ctrl-C raise Stopped(`message`) at once (main thread; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        err = Stopped(f"stopped by {'Ctrl-C' if signum == signal.SIGINT else 'SIGTERM'} {message}")
        if signum == signal.SIGINT:
            err.exit_code = EXIT_INTERRUPTED
        raise err

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
