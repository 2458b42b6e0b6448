"""End to end through the real package format: signed, encrypted packages written with
protocol.package are verified, decrypted and streamed into the table store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from connectors.stores.tables import PayloadMalformed, TableStore
from protocol.keys import init_keys
from protocol.package import PackageWriter, open_package
from tests.tables_helpers import CATALOG, Source, staff_row, table_contents


def _write(tmp: Path, platform: Any, agent: Any, header: Any, payload: bytes) -> Path:
    path = tmp / f"{header.package_id}.pkg"
    with PackageWriter(
        path,
        kind=header.kind,
        sender=platform,
        recipient=agent.public_bundle(),
        subscription=header.subscription,
        sequence=header.sequence,
        builds_on=header.builds_on,
        catalog=CATALOG,
        schema=header.schema,
        expected_state=header.expected_state,
    ) as writer:
        for start in range(0, len(payload), 10_000):
            writer.write(payload[start : start + 10_000])
    return path


@pytest.mark.parametrize("url_fixture", ["sqlite_url", "pg_url"])
def test_packages_apply_end_to_end(tmp_path: Path, request: pytest.FixtureRequest, url_fixture: str) -> None:
    url = request.getfixturevalue(url_fixture)
    platform = init_keys(tmp_path / "platform", "platform")
    agent = init_keys(tmp_path / "agent", "agent-001")
    source = Source()
    store = TableStore(url)
    try:
        packages = [
            source.snapshot([staff_row(i) for i in range(3000)]),
            source.delta(upserts=[staff_row(i, 1) for i in range(0, 3000, 13)], deletes=[("T000005",)]),
        ]
        for header, payload in packages:
            path = _write(tmp_path, platform, agent, header, payload)
            with open_package(
                path, trusted_senders={"platform": platform.public_bundle()}, recipient=agent
            ) as package:
                result = store.apply(package.header, package.plaintext(), "staff")
            assert result.applied and result.match, result
        assert table_contents(url, "staff", source.schema) == source.canonical_set()
        # a package whose (authentic) payload breaks the CSV contract is rejected, nothing applied
        header, _ = source.delta(upserts=[staff_row(1, 9)])
        path = _write(tmp_path, platform, agent, header, b'U,"T000001",broken\n')
        with (
            open_package(
                path, trusted_senders={"platform": platform.public_bundle()}, recipient=agent
            ) as package,
            pytest.raises(PayloadMalformed),
        ):
            store.apply(package.header, package.plaintext(), "staff")
        assert store.position(source.subscription).sequence == 2  # type: ignore[union-attr]
    finally:
        store.close()
