"""Identifier rules: which table and column names are accepted, and the agent's own names.

Names come from signed headers and from local config, but are still treated as hostile:
they are validated here and always *quoted* by the dialect's identifier preparer, never
pasted into SQL. Quotes, semicolons, SQL keywords and Chinese are fine once quoted; what
is refused is what no target can hold faithfully (control characters, surrounding blanks,
more than 63 UTF-8 bytes — PostgreSQL would silently truncate).
"""

from __future__ import annotations

import hashlib
import unicodedata

from connectors.stores.tables.errors import InvalidName

MAX_NAME_BYTES = 63
STATE_TABLE = "edu_sync_state"
CATALOG_TABLE = "edu_sync_catalog"
RESERVED_PREFIX = "edu_sync_"


def check_name(name: str, what: str) -> str:
    """Return ``name`` if it is a usable identifier, else raise :class:`InvalidName`."""
    if not isinstance(name, str) or not name:
        raise InvalidName(f"{what} name is empty")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise InvalidName(f"{what} name {name!r} is longer than {MAX_NAME_BYTES} UTF-8 bytes")
    if name != name.strip():
        raise InvalidName(f"{what} name {name!r} has leading or trailing blanks")
    bad = [c for c in name if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")]
    if bad:
        raise InvalidName(f"{what} name {name!r} contains control or unassigned characters {bad!r}")
    if name.lower().startswith(RESERVED_PREFIX):
        raise InvalidName(f"{what} name {name!r} uses the agent's reserved prefix {RESERVED_PREFIX!r}")
    return name


def internal_name(kind: str, table: str, generation: int) -> str:
    """A plain ASCII name for the agent's staging/old tables and constraints of ``table``."""
    tag = hashlib.sha256(table.encode("utf-8")).hexdigest()[:12]
    return f"{RESERVED_PREFIX}{kind}_{tag}_{generation}"
