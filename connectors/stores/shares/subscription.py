"""An opened, locked subscription directory: descriptors and state, nothing else."""

from __future__ import annotations

from connectors.stores.shares import fsops
from connectors.stores.shares.state import ShareState

STAGING_NAME = "staging"


class Subscription:
    """One opened, locked subscription directory."""

    def __init__(self, root_fd: int, dirname: str, fd: int, meta_fd: int) -> None:
        self.root_fd, self.dirname, self.fd, self.meta_fd = root_fd, dirname, fd, meta_fd
        self.state = ShareState(meta_fd)

    def staging_fd(self, create: bool, mode: int = 0o700) -> int | None:
        if create:
            return fsops.make_dir_at(self.meta_fd, STAGING_NAME, STAGING_NAME, mode, -1, -1)
        if fsops.lstat_at(self.meta_fd, STAGING_NAME) is None:
            return None
        return fsops.open_dir_at(self.meta_fd, STAGING_NAME, STAGING_NAME)

    def close(self) -> None:
        self.state.close()
        for fd in (self.meta_fd, self.fd, self.root_fd):
            fsops.close_quietly(fd)
