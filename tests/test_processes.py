"""worker.processes: a process tree remembered while it lives, so re-parented processes are killed too."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from worker.processes import ProcessTree, descendants

# A parent that starts a child in a session of its own (as torchrun starts its ranks); the child
# ignores SIGTERM.
PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
    "time.sleep(300)"],
    start_new_session=True, stdout=subprocess.PIPE, text=True)
child.stdout.readline()
print(child.pid, flush=True)
time.sleep(300)
"""


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


def test_a_re_parented_child_that_ignores_sigterm_is_still_killed() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    tree = ProcessTree(parent.pid)
    tree.refresh()
    assert set(tree.alive()) == {parent.pid, child}
    parent.kill()  # the parent dies: its child is re-parented and no longer below the root
    parent.wait()
    assert child not in descendants(parent.pid) and not gone(child)

    began = time.monotonic()
    tree.terminate(grace=0.5)
    assert gone(child)  # SIGTERM ignored, SIGKILL after the grace
    assert time.monotonic() - began < 5
    assert tree.alive() == []
