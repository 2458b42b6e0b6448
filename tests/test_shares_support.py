"""Helpers for the share-store tests: build ``files`` headers and payloads like the hub does."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

from connectors.stores.shares.fileset import fileset_summary
from connectors.stores.shares.manifest import ManifestEntry, build_manifest

CATALOG = {
    "resource_name": "教务处数据-课程表信息",
    "mounted_resource_name": "课程表信息表",
    "provider": "教务处",
    "sharing_type": "authorised",
    "security_level": "内部",
    "agreement_id": "AGR-2025-001",
}


def entries_of(files: dict[str, bytes]) -> list[ManifestEntry]:
    return [ManifestEntry(p, len(b), hashlib.sha256(b).hexdigest()) for p, b in files.items()]


def files_package(
    files: dict[str, bytes],
    previous: dict[str, bytes] | None = None,
    *,
    sequence: int = 1,
    builds_on: int | None = None,
    subscription: str = "sub-files",
) -> tuple[dict[str, Any], bytes]:
    """(header dict, payload) taking ``previous`` to ``files`` (a snapshot when previous is None)."""
    manifest = build_manifest(entries_of(files), None if previous is None else entries_of(previous))
    payload = b"".join(files[e.path] for e in manifest.entries)
    header = {
        "kind": "files",
        "package_id": uuid.uuid4().hex,
        "subscription": subscription,
        "sequence": sequence,
        "builds_on": builds_on if builds_on is not None else sequence - 1,
        "catalog": dict(CATALOG),
        "counts": {"files": len(manifest.entries), "plaintext_bytes": len(payload)},
        "expected_state": fileset_summary(entries_of(files)),
        "manifest": manifest.to_json(),
    }
    return header, payload


def tree(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` except the agent's metadata, by relative path."""
    result: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d != ".edu-sync"]
        for name in filenames:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            result[rel] = (Path(dirpath) / name).read_bytes()
    return result
