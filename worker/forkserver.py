"""The worker's fork server: a job's `python -m <module> ...` command started as a fork of a process that has
imported torch and the trainer already, instead of a fresh interpreter that imports them again.

Importing the trainer (torch, torchvision, torch._dynamo by the first optimizer) costs about 3 s of CPU on a
small machine, at the start of every training, sample, eval and attention job; a fork costs milliseconds.
`sagan worker` starts one server beside Celery, under worker.guard like its reaper (so it goes with the
worker), and the supervisor's LocalLauncher asks it for each job's process tree; where there is none (it
died, or the worker runs without one), the launcher starts the tree the plain way.

What the supervisor gets is the tree worker.guard would give it, with the same guarantees:

    server ── fork ──> job guard (own session, subreaper) ── fork ──> the command (same process group)

- The job guard sends its pid, then the command's exit status, on the supervisor's connection. The
  connection is how it learns that the supervisor died (end of file, even after kill -9), where worker.guard
  has the kernel's parent-death signal: then it takes its whole tree down, like worker.guard does.
- The command runs as `python -m` would run it (runpy, `__main__`, its own exit status, atexit handlers and
  threads joined at exit), in the job's environment and working directory, its output in the job's log.
  Its command line (`ps`, /proc/PID/cmdline) is the job's command, so it reads as the process it stands for.
- Only the server's own imports are shared, copy-on-write: the server never initialises CUDA, opens no file
  a job needs, and starts no thread of its own (`import torch` starts one native thread, as it does before
  every DataLoader worker torch forks on Linux), and each job gets its own interpreter state from then on.
- A command that is not `<this python> -m <module>` (none of the worker's are) is executed instead.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import runpy
import select
import signal
import socket
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from setproctitle import setproctitle

from worker.guard import finish, take_down
from worker.processes import PR_SET_CHILD_SUBREAPER, ProcessTree, prctl, reap_children

# What a job's process would import first: the trainer (torch, torchvision), what its first optimizer
# imports (torch._dynamo), its TensorBoard writer (optional: a worker without tensorboard writes no events),
# the CLI behind sample, eval and attention jobs, and torchrun's launcher of a multi-rank job's ranks.
PRELOAD = ("sagan_core.train", "torch._dynamo", "sagan_core.cli", "sagan_core.rank_launcher")
OPTIONAL_PRELOAD = ("torch.utils.tensorboard",)
REQUEST_WAIT_S = 10.0


@dataclass(frozen=True)
class Request:
    """One job's process tree, as LocalLauncher.start would start it."""

    command: list[str]
    env: dict[str, str]
    cwd: str
    log_path: str
    grace_seconds: float

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode() + b"\n"

    @classmethod
    def decode(cls, line: bytes) -> Request:
        return cls(**json.loads(line))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A worker's fork server (started by `sagan worker`).")
    parser.add_argument("--socket", required=True, type=Path, help="the Unix socket to listen on")
    parser.add_argument("--own-folder", action="store_true",
                        help="the socket's folder was made for this server alone: remove it with the socket "
                             "at exit (`sagan worker`'s own server: its worker may die without cleaning up)")
    args = parser.parse_args(argv)
    listener = listen(args.socket)
    # Each role below returns only in the forked process that plays the next one, so a fork leaves every
    # `with` and `finally` of its parent's role behind it (the server's, which removes the socket, included).
    request, connection = serve(listener, args.socket, own_folder=args.own_folder)
    command = guard_job(request, connection)
    return run_module(command)


def listen(path: Path) -> socket.socket:
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o600)  # whoever connects runs commands as this worker
    listener.listen()
    return listener


def serve(listener: socket.socket, path: Path, *, own_folder: bool = False) -> tuple[Request, socket.socket]:
    """Accept requests until SIGTERM; return (in the forked job guard only) the request and its connection.
    At exit the server removes its socket (and, with `own_folder`, the socket's folder)."""
    server_pid = os.getpid()
    # Exited job guards are reaped as they exit (their CPU time adds to the server's, as for any parent).
    signal.signal(signal.SIGCHLD, lambda *_: reap_children())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            connection, _ = listener.accept()
            with connection:
                # A supervisor sends its request as it connects; one that does not holds up no other for long.
                connection.settimeout(REQUEST_WAIT_S)
                try:
                    line = connection.makefile("rb").readline()
                except TimeoutError:
                    continue
                if not line:
                    continue
                preload()
                sys.stdout.flush()
                sys.stderr.flush()
                if os.fork() == 0:
                    listener.close()
                    return Request.decode(line), connection.dup()
    finally:
        if os.getpid() == server_pid:
            listener.close()
            path.unlink(missing_ok=True)
            if own_folder:
                with contextlib.suppress(OSError):  # not empty: something else put a file there; keep it
                    path.parent.rmdir()


def preload() -> None:
    """Import what every job imports, once: at the first job, so that a worker that runs none (or one)
    spends no more than the plain way would. That job waits for it as it would wait for its own imports."""
    for module in PRELOAD:
        importlib.import_module(module)
    for module in OPTIONAL_PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    if sys.modules["torch"].cuda.is_initialized():  # a fork could not use the GPU: jobs start the plain way
        sys.exit("the fork server's imports initialised CUDA: it cannot fork jobs that use it")


def guard_job(request: Request, connection: socket.socket) -> list[str]:
    """The job guard: start the command in a session of its own, report its pid and exit status on
    `connection`, take the tree down if the supervisor goes. Returns (in the forked command only) the
    command to run; the guard itself exits here."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    connection.settimeout(None)
    os.setsid()
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    log = os.open(request.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    for fd, target in ((null, 0), (log, 1), (log, 2)):
        os.dup2(fd, target)
    os.close(log)
    os.close(null)
    os.chdir(request.cwd)
    # A SIGTERM while the supervisor lives is the supervisor's (a cancel, a stop aimed at the command): wait.
    signal.signal(signal.SIGTERM, lambda *_: None)
    setproctitle(f"{sys.executable} -m worker.guard --grace {request.grace_seconds} -- "
                 + " ".join(request.command))
    try:  # first: a supervisor that gave up waiting (its end closed) gets no command started
        connection.sendall(f"pid {os.getpid()}\n".encode())
    except OSError:
        os._exit(1)
    child = os.fork()
    if child == 0:
        connection.close()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.environ.clear()
        os.environ.update(request.env)
        return request.command
    below = ProcessTree(os.getpid())
    child_exited = os.pidfd_open(child)
    while True:
        ready, _, _ = select.select([connection.fileno(), child_exited], [], [])
        if child_exited in ready:
            _, status = os.waitpid(child, 0)
            code = finish(below, request.grace_seconds, -os.WTERMSIG(status) if os.WIFSIGNALED(status)
                          else os.WEXITSTATUS(status))
            with contextlib.suppress(OSError):
                connection.sendall(f"exit {code}\n".encode())
            os._exit(code)
        if not connection.recv(1):  # end of file: the supervisor died
            take_down(below, request.grace_seconds)
            os._exit(1)


def run_module(command: list[str]) -> Any:
    """Run `<python> -m <module> args` as that interpreter would (exit status, traceback, atexit); exec any
    other command."""
    if command[:1] != [sys.executable] or command[1:2] != ["-m"] or len(command) < 3:
        os.execvp(command[0], command)
    setproctitle(" ".join(command))
    module, sys.argv = command[2], [command[2], *command[3:]]
    sys.path[0] = os.getcwd()  # as `python -m` does: the working directory first
    with warnings.catch_warnings():
        # runpy warns that the module is in sys.modules already: this server imported it on purpose.
        warnings.filterwarnings("ignore", message=".*found in sys.modules", category=RuntimeWarning)
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
