"""The local verified cache: a copy of each subscription's current files, by SHA-256.

It lets drift be repaired without asking the platform to resend. It lives outside the
share (a directory of the agent's own, e.g. under its state directory), holds exactly
the current set of each subscription (``<root>/<dirname>/<sha[:2]>/<sha>``), is filled
from verified staged content, and every use re-verifies the content while copying it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from connectors.stores.shares import fsops
from connectors.stores.shares.manifest import ManifestEntry

_PART = ".part"


class VerifiedCache:
    """Content-addressed copies of verified files, one area per subscription directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _path(self, dirname: str, sha256: str) -> Path:
        return self.root / dirname / sha256[:2] / sha256

    def put(self, dirname: str, dir_fd: int, name: str, entry: ManifestEntry) -> None:
        """Copy a verified staged file (``name`` below ``dir_fd``) in, unless already there."""
        target = self._path(dirname, entry.sha256)
        if target.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = target.with_name(target.name + _PART)
        src = os.open(name, fsops.READ_FLAGS, dir_fd=dir_fd)
        try:
            dst = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                remaining = entry.size
                while remaining:  # reflinks or in-kernel copies where the filesystem can
                    copied = os.copy_file_range(src, dst, remaining)
                    if copied == 0:
                        break
                    remaining -= copied
            finally:
                os.close(dst)
        finally:
            os.close(src)
        os.replace(tmp, target)

    def get(self, dirname: str, entry: ManifestEntry) -> Path | None:
        """The cached copy of ``entry``'s content, if any (the caller verifies while copying)."""
        path = self._path(dirname, entry.sha256)
        return path if path.is_file() else None

    def keep_only(self, dirname: str, wanted: Iterable[str]) -> None:
        """Drop every cached content of ``dirname`` whose SHA-256 is not in ``wanted``."""
        area = self.root / dirname
        if not area.is_dir():
            return
        keep = set(wanted)
        for bucket in area.iterdir():
            for item in bucket.iterdir():
                if item.name not in keep:
                    item.unlink()

    def drop(self, dirname: str) -> None:
        """Forget a subscription entirely (revocation)."""
        area = self.root / dirname
        if area.exists():
            shutil.rmtree(area)
