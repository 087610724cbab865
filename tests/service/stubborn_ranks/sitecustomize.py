"""A test helper, never on a production path: Python imports this module at the start of every
process that has this folder on PYTHONPATH (a test worker started so). With
SAGAN_TEST_RANKS_IGNORE_SIGTERM set, every rank of a multi-rank training ignores SIGTERM for good, as a
rank stuck in native code or with a careless handler would: later signal.signal(SIGTERM, ...) calls, the
trainer's own included, change nothing. The ranks are forks of sagan_core.rank_launcher (no interpreter
starts for them), so the fault goes in at the fork: the fork hook below is inherited from whichever
process imported this module (the worker's fork server, or a launcher started the plain way)."""

import os
import signal
import sys


def _ignore_sigterm_for_good() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    set_handler = signal.signal

    def keep_ignoring_sigterm(signum: int, handler: object) -> object:
        if signum == signal.SIGTERM:
            return signal.SIG_IGN
        return set_handler(signum, handler)

    signal.signal = keep_ignoring_sigterm


def _in_a_rank() -> None:
    if sys.argv[0].endswith("rank_launcher.py"):  # this fork's parent is the rank launcher
        _ignore_sigterm_for_good()


if os.environ.get("SAGAN_TEST_RANKS_IGNORE_SIGTERM"):
    os.register_at_fork(after_in_child=_in_a_rank)
