"""An exclusive lock between processes on one machine (or on a shared POSIX filesystem):
``fcntl.flock`` on a lock file. The kernel drops the lock when its holder exits, even when it is
killed, so a crashed holder never leaves a stale lock behind (unlike a marker file).

    with FileLock(path):          # blocks until no other process holds ``path``
        ...
    lock = FileLock(path); lock.acquire(blocking=False) -> bool; lock.release()
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Self


class FileLock:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock; with ``blocking=False`` return False at once if another process holds it."""
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
