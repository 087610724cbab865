"""The embedded queue's transport: kombu's filesystem transport, first in, first out.

kombu names a message file by the millisecond and a random uuid, and workers take the files in name order, so
messages sent within one millisecond (a sweep's children, sent in arm order) came out in random order. Here
the name carries a counter after the millisecond, zero-padded so that name order is sending order within a
process (messages of two processes in the same millisecond have no order to keep).
"""

from __future__ import annotations

import itertools
import os
import threading
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

_sent = itertools.count()
_sent_lock = threading.Lock()


class Channel(filesystem.Channel):
    # kombu's base declares _put(queue, message) but calls it with **kwargs (virtual/base.py), as here
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        with _sent_lock:
            order = next(_sent)
        name = f"{round(monotonic() * 1000):015d}_{order:012d}_{uuid.uuid4()}.{queue}.msg"
        path = os.path.join(self.data_folder_out, name)
        try:
            with open(path, "wb", buffering=0) as file:
                filesystem.lock(file, filesystem.LOCK_EX)  # as kombu: a reader waits for the whole message
                try:
                    file.write(str_to_bytes(dumps(payload)))
                finally:
                    filesystem.unlock(file)
        except OSError as error:
            raise ChannelError(f"Cannot add file {path!r} to directory") from error


class Transport(filesystem.Transport):
    Channel = Channel

    # Both of kombu's signatures: timeout (virtual transports) and **kwargs (the base; nothing passes any).
    def drain_events(self, connection: Any, timeout: float | None = None, **_: Any) -> Any:
        """Wait for a message as kombu does, one polling interval at a time, and stop waiting once the Celery
        worker of this process is stopping: its loop for a transport like this one (no event loop) checks
        for a warm shutdown only between calls, each of which waits up to 2 s."""
        from celery.worker import state

        deadline = None if timeout is None else monotonic() + timeout
        while True:
            wait = self.polling_interval if deadline is None else max(0.0, min(self.polling_interval,
                                                                               deadline - monotonic()))
            try:
                return super().drain_events(connection, timeout=wait)
            except TimeoutError:  # socket.timeout, which kombu raises
                stopping = state.should_stop is not None or state.should_terminate is not None
                if stopping or (deadline is not None and monotonic() >= deadline):
                    raise
