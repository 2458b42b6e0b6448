"""Share store: applies ``files`` packages into one subdirectory of a file share per subscription."""

from connectors.stores.shares.errors import PackageRejected, ShareEnvironmentError, ShareError
from connectors.stores.shares.manifest import (
    MANIFEST_FORMAT,
    Manifest,
    ManifestEntry,
    build_manifest,
    validate_manifest,
)
from connectors.stores.shares.paths import check_collisions, validate_path

__all__ = [
    "MANIFEST_FORMAT",
    "Manifest",
    "ManifestEntry",
    "PackageRejected",
    "ShareEnvironmentError",
    "ShareError",
    "build_manifest",
    "check_collisions",
    "validate_manifest",
    "validate_path",
]
