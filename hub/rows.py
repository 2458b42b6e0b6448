"""Rows in their canonical form, and the state digest, exactly as the agent computes them.

Both come from the shared protocol modules (``protocol.canonical``, ``protocol.digest``): the
expected digest a package header carries is only worth something if the agent's store hashes
the same bytes with the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from hub.catalog import Column
from protocol import canonical
from protocol import digest as table_digest


class RowCodec:
    """Source values → canonical row line, canonical key, delete record."""

    def __init__(self, dictionary: Sequence[Column]) -> None:
        self.columns = [canonical.ColumnSpec.from_dict(c.model_dump()) for c in dictionary]
        self.key_positions = [i for i, c in enumerate(self.columns) if c.primary_key]
        self.key_columns = [self.columns[i] for i in self.key_positions]
        self.width = len(self.columns)
        self._converters = [_converter(c) for c in self.columns]
        self._key_converters = [self._converters[i] for i in self.key_positions]

    def values(self, row: Sequence[Any]) -> list[str | None]:
        return [convert(v) for convert, v in zip(self._converters, row, strict=True)]

    def encode(self, row: Sequence[Any]) -> tuple[str, str]:
        """(canonical key, canonical line) of a source row, each value canonicalised once."""
        values = self.values(row)
        key = canonical.encode_values([values[i] for i in self.key_positions])
        return key, canonical.encode_values(values)

    def key_of(self, key_values: Sequence[Any]) -> str:
        """The same key from a keys-only query."""
        converters = self._key_converters
        return canonical.encode_values(
            [convert(v) for convert, v in zip(converters, key_values, strict=True)]
        )

    def key_values(self, key: str) -> list[str | None]:
        record = next(canonical.iter_records([b"D," + key.encode("utf-8") + b"\n"], len(self.key_positions)))
        return record.values

    def delete_record(self, key: str) -> str:
        """``D`` + the key values in their columns, every other field NULL (no terminator)."""
        fields: list[str | None] = [None] * self.width
        for position, value in zip(self.key_positions, self.key_values(key), strict=True):
            fields[position] = value
        return "D," + canonical.encode_values(fields)

    def schema(self) -> list[dict[str, Any]]:
        return [
            {
                "name": c.name,
                "type": c.type.declared,
                "not_null": c.not_null,
                "primary_key": c.primary_key,
                "format": c.format,
                "label": c.label,
                "meaning": c.meaning,
            }
            for c in self.columns
        ]


def _converter(column: canonical.ColumnSpec) -> Callable[[Any], str | None]:
    """canonicalize() for one column, with shortcuts for the two commonest cases.

    A driver's ``str`` for a VARCHAR column is already canonical (canonicalize returns it
    unchanged), and so is ``str(int)`` for a whole-number column when it fits; every other
    value goes through the shared code. tests/test_hub_rows.py checks both against it.
    """
    ctype = column.type
    if ctype.family == canonical.Family.TEXT and not ctype.fixed:

        def text(value: Any) -> str | None:
            return value if type(value) is str else canonical.canonicalize(value, column)

        return text
    whole = ctype.family == canonical.Family.INTEGER or (
        ctype.family == canonical.Family.DECIMAL and ctype.scale == 0
    )
    if whole:
        # An int's canonical form is its decimal text, when it fits; anything else (or an int
        # that does not fit, which must raise) goes through the shared code.
        digits = ctype.precision if ctype.family == canonical.Family.DECIMAL else None
        low, high = (
            (ctype.int_min, ctype.int_max) if ctype.family == canonical.Family.INTEGER else (None, None)
        )

        def integer(value: Any) -> str | None:
            if type(value) is int:
                text = str(value)
                fits = (low is None or high is None or low <= value <= high) and (
                    digits is None or len(text.lstrip("-")) <= digits
                )
                if fits:
                    return text
            return canonical.canonicalize(value, column)

        return integer
    return lambda value: canonical.canonicalize(value, column)


class StateDigest:
    """The published state's LtHash (protocol.digest), updated row by row in batches."""

    def __init__(self, inner: table_digest.LtHash) -> None:
        self._d = inner
        self._add: tuple[list[bytes], list[bytes]] = ([], [])
        self._remove: tuple[list[bytes], list[bytes]] = ([], [])

    @classmethod
    def empty(cls) -> StateDigest:
        return cls(table_digest.LtHash())

    @classmethod
    def from_bytes(cls, saved: bytes) -> StateDigest:
        return cls(table_digest.LtHash.from_bytes(saved))

    def add(self, key: str, line: str) -> None:
        self._queue(self._add, key, line)

    def remove(self, key: str, line: str) -> None:
        self._queue(self._remove, key, line)

    def _queue(self, queue: tuple[list[bytes], list[bytes]], key: str, line: str) -> None:
        queue[0].append(key.encode("utf-8"))
        queue[1].append(line.encode("utf-8"))
        if len(queue[0]) >= table_digest.BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._add[0]:
            self._d.add(*self._add)
            self._add = ([], [])
        if self._remove[0]:
            self._d.remove(*self._remove)
            self._remove = ([], [])

    def summary(self) -> dict[str, Any]:
        """What package headers carry as ``expected_state`` and the agent compares."""
        self._flush()
        return self._d.summary()

    def to_bytes(self) -> bytes:
        self._flush()
        return self._d.to_bytes()
