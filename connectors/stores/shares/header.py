"""The parts of a verified ``files`` package header the share store uses."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from connectors.stores.shares.errors import (
    CountMismatchError,
    ManifestFormatError,
    WrongPackageKindError,
)
from connectors.stores.shares.fileset import check_summary
from connectors.stores.shares.manifest import Manifest, validate_manifest

_PACKAGE_ID = re.compile(r"^[0-9a-f]{32}$")
MARKER_FIELDS = (
    "resource_name",
    "mounted_resource_name",
    "provider",
    "sharing_type",
    "security_level",
    "agreement_id",
    "agreement",  # validity period of an authorised-sharing agreement, when the catalog carries it
)


def _field(header: object, name: str) -> Any:
    if isinstance(header, Mapping):
        return header.get(name)
    return getattr(header, name, None)


@dataclass(frozen=True)
class FilesPackage:
    """A ``files`` package as the store sees it: identity, position, catalog, manifest."""

    package_id: str
    subscription: str
    sequence: int
    builds_on: int | None
    catalog: Mapping[str, Any]
    manifest: Manifest
    expected_summary: Mapping[str, Any] | None = None

    @classmethod
    def from_header(cls, header: object) -> FilesPackage:
        """Accepts ``protocol.header.PackageHeader`` or its JSON dict (already signature-verified)."""
        kind = _field(header, "kind")
        if kind != "files":
            raise WrongPackageKindError(f"package kind {kind!r} is not 'files'")
        package_id = _field(header, "package_id")
        if not isinstance(package_id, str) or not _PACKAGE_ID.match(package_id):
            raise ManifestFormatError(f"package id {package_id!r} is not 32 lowercase hex digits")
        sequence = _field(header, "sequence")
        builds_on = _field(header, "builds_on")
        if not isinstance(sequence, int) or not (builds_on is None or isinstance(builds_on, int)):
            raise ManifestFormatError("sequence/builds_on must be integers")
        raw_manifest = _field(header, "manifest")
        if raw_manifest is None:
            raise ManifestFormatError("a files package needs a manifest section")
        manifest = validate_manifest(raw_manifest)
        counts = _field(header, "counts") or {}
        if counts.get("files") != len(manifest.entries):
            raise CountMismatchError(
                f"header counts.files {counts.get('files')!r} != {len(manifest.entries)} entries"
            )
        if counts.get("plaintext_bytes") != manifest.total_bytes:
            raise CountMismatchError(
                f"header counts.plaintext_bytes {counts.get('plaintext_bytes')!r} != "
                f"{manifest.total_bytes} bytes declared by the entries"
            )
        expected_state = _field(header, "expected_state")
        summary: Mapping[str, Any] | None = None
        if expected_state is not None:
            try:
                check_summary(expected_state)
            except ValueError as exc:
                raise ManifestFormatError(f"header expected_state: {exc}") from exc
            if expected_state["digest"] != manifest.expected_digest:
                raise CountMismatchError("header expected_state.digest differs from manifest.expected_digest")
            if expected_state["rows"] != manifest.file_count:
                raise CountMismatchError("header expected_state.rows differs from manifest.file_count")
            summary = expected_state
        subscription = _field(header, "subscription")
        if not isinstance(subscription, str) or not subscription:
            raise ManifestFormatError("header has no subscription id")
        catalog = _field(header, "catalog") or {}
        if not isinstance(catalog, Mapping):
            raise ManifestFormatError("header catalog is not an object")
        return cls(package_id, subscription, sequence, builds_on, catalog, manifest, summary)

    def marker(self) -> dict[str, Any]:
        """What the marker file records about the subscription."""
        fields: dict[str, Any] = {"subscription": self.subscription}
        for key in MARKER_FIELDS:
            fields[key] = self.catalog.get(key)
        if fields["provider"] is None and isinstance(fields["resource_name"], str):
            # 附件三: resource names read 机构名称-数据基本信息; the provider is the first part.
            fields["provider"] = fields["resource_name"].split("-", 1)[0]
        return fields
