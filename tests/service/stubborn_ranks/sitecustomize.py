"""A test helper, never on a production path: Python imports this module at the start of every
process that has this folder on PYTHONPATH (a test worker started so). With
SAGAN_TEST_RANKS_IGNORE_SIGTERM set, every torchrun rank (it has RANK in its environment) ignores
SIGTERM for good, as a rank stuck in native code or with a careless handler would: later
signal.signal(SIGTERM, ...) calls, the trainer's own included, change nothing."""

import os
import signal

if os.environ.get("SAGAN_TEST_RANKS_IGNORE_SIGTERM") and "RANK" in os.environ:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _set_handler = signal.signal

    def _keep_ignoring_sigterm(signum: int, handler: object) -> object:
        if signum == signal.SIGTERM:
            return signal.SIG_IGN
        return _set_handler(signum, handler)

    signal.signal = _keep_ignoring_sigterm
