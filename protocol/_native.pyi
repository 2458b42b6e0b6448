# Types of the compiled module built from protocol/csrc/native.c (see there and setup.py).
from collections.abc import Sequence
from typing import Any

def lthash_update(
    lanes: Any,
    counts: Any,
    keys: Sequence[bytes | str],
    items: Sequence[bytes | str],
    sign: int,
    item_key: bytes,
    bucket_key: bytes,
    /,
) -> None: ...
def check_rows(
    records: Sequence[str],
    plan: tuple[tuple[int, ...], tuple[tuple[int, ...], ...]],
    lanes: Any,
    counts: Any,
    item_key: bytes,
    bucket_key: bytes,
    mode: int,
    /,
) -> bool | list[bytes]: ...
def set_xof_width(width: int, /) -> int: ...
def parse_rows(records: Sequence[str], width: int, /) -> tuple[str, list[tuple[str | None, ...]]] | None: ...
def split_records(text: str, line: int, /) -> tuple[list[str], list[int] | None, int, int]: ...
def sqlite_register(sqlite_module_path: str, /) -> None: ...
