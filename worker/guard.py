"""Process-group leader between the supervisor and torchrun: no training outlives its supervisor.

(`sagan worker` also starts its companion reaper under a guard, so that one goes with the worker too.)

`python -m worker.guard --grace S -- CMD...` runs CMD in its own process group (the supervisor starts
the guard with start_new_session=True). If the supervising worker dies, even by kill -9, the kernel
sends the guard SIGTERM (PR_SET_PDEATHSIG); the guard then SIGTERMs the whole group and every process
below it and SIGKILLs them after the grace period. A SIGTERM while the supervisor lives came from the
supervisor itself (a cancel, or a graceful stop aimed at CMD), so the guard just waits for CMD.

The guard is a child subreaper: ranks that torchrun started in sessions of their own come back to it
when torchrun dies, so "every process below it" includes them. Whatever is still below it when CMD
exits is taken down too, so nothing the training started outlives it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from worker.processes import PR_SET_CHILD_SUBREAPER, PR_SET_PDEATHSIG, ProcessTree, prctl


def main(argv: list[str]) -> int:
    split = argv.index("--")
    grace = float(argv[argv.index("--grace") + 1]) if "--grace" in argv[:split] else 10.0
    command = argv[split + 1:]
    parent = os.getppid()
    prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        return 1
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    child = subprocess.Popen(command)
    below = ProcessTree(os.getpid())

    def on_sigterm(_signum: int, _frame: object) -> None:
        if os.getppid() != parent:  # orphaned: leave the wait below and take everything down
            raise SupervisorGone

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        returncode = child.wait()
    except SupervisorGone:
        take_down(below, grace)
        return 1
    return finish(below, grace, returncode)


def take_down(below: ProcessTree, grace: float) -> None:
    """The supervisor is gone: SIGTERM this process group and every process below this one, SIGKILL what is
    left after `grace` seconds."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.killpg(0, signal.SIGTERM)
    below.terminate(grace, except_pids=(os.getpid(),), reap=True)
    os.killpg(0, signal.SIGKILL)


def finish(below: ProcessTree, grace: float, returncode: int) -> int:
    """The command ended with `returncode` (a Popen's: -N for signal N): stop whatever it left below this
    process (e.g. a rank torchrun lost) and return the guard's exit status (128 + N for a signal)."""
    below.terminate(grace, except_pids=(os.getpid(),), reap=True)
    return 128 - returncode if returncode < 0 else returncode


class SupervisorGone(Exception):
    """The supervising worker died (the kernel's parent-death signal)."""


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
