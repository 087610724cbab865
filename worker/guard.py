"""Process-group leader between the supervisor and torchrun: no training outlives its supervisor.

`python -m worker.guard --grace S -- CMD...` runs CMD in its own process group (the supervisor starts
the guard with start_new_session=True). If the supervising worker dies, even by kill -9, the kernel
sends the guard SIGTERM (PR_SET_PDEATHSIG); the guard then SIGTERMs the whole group and SIGKILLs it
after the grace period. A SIGTERM while the supervisor lives came from the supervisor's own killpg,
which every process in the group already received, so the guard just waits for CMD.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    split = argv.index("--")
    grace = float(argv[argv.index("--grace") + 1]) if "--grace" in argv[:split] else 10.0
    command = argv[split + 1:]
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        return 1
    child = subprocess.Popen(command)

    def on_sigterm(_signum: int, _frame: object) -> None:
        if os.getppid() != parent:  # orphaned: leave the wait below and take the group down
            raise SupervisorGone

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        returncode = child.wait()
    except SupervisorGone:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.killpg(0, signal.SIGTERM)
        try:
            child.wait(grace)  # outside the handler, so it can return as soon as the child is gone
        except subprocess.TimeoutExpired:
            pass
        os.killpg(0, signal.SIGKILL)
        return 1
    return 128 - returncode if returncode < 0 else returncode


class SupervisorGone(Exception):
    """The supervising worker died (the kernel's parent-death signal)."""


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
