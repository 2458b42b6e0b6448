"""TableStore on real SQLite, PostgreSQL and MariaDB: lifecycle, exactly once, validation,
schema changes, hostile names, verify and revocation."""

from __future__ import annotations

import copy

import pytest
import sqlalchemy as sa

from connectors.stores.tables import (
    DigestMismatch,
    InvalidName,
    PayloadMalformed,
    RowRejected,
    SchemaIncompatible,
    SubscriptionRevoked,
    TableEnvironmentError,
    TableStore,
    UnsupportedPackage,
)
from protocol.canonical import encode_record, encode_values
from protocol.digest import bucket_of
from tests.tables_helpers import STAFF_SCHEMA, Source, staff_row, stream, table_contents

TABLE = "教职工基本信息"


@pytest.fixture
def store(db_url: str) -> TableStore:
    result = TableStore(db_url)
    yield result
    result.close()


def apply(store: TableStore, header: object, payload: bytes, table: str = TABLE):  # type: ignore[no-untyped-def]
    return store.apply(header, stream(payload), table)  # type: ignore[arg-type]


def test_snapshot_then_deltas_equal_the_source(store: TableStore, db_url: str) -> None:
    source = Source()
    result = apply(store, *source.snapshot([staff_row(i) for i in range(120)]))
    assert result.status == "applied" and result.rows == 120 and result.match is True
    assert table_contents(db_url, TABLE, STAFF_SCHEMA) == source.canonical_set()

    # updates across the key range, inserts, deletes (incl. a key that does not exist)
    header, payload = source.delta(
        upserts=[staff_row(i, 1) for i in range(0, 120, 7)] + [staff_row(i) for i in range(500, 520)],
        deletes=[source.key(staff_row(i)) for i in range(3, 120, 11) if i % 7] + [("T999999",)],
    )
    result = apply(store, header, payload)
    assert result.status == "applied"
    assert result.match is True and result.mismatched_buckets == []
    assert result.rows == len(source.rows)
    assert result.rows_deleted == len([i for i in range(3, 120, 11) if i % 7])
    assert table_contents(db_url, TABLE, STAFF_SCHEMA) == source.canonical_set()

    position = store.position(source.subscription)
    assert position is not None and position.sequence == 2 and position.package_id == "pkg-2"
    assert position.digest == source.expected()
    assert store.verify(source.subscription).match


def test_already_applied_is_skipped_and_gap_is_held(store: TableStore, db_url: str) -> None:
    source = Source()
    snap = source.snapshot([staff_row(i) for i in range(10)])
    apply(store, *snap)
    first = source.delta(upserts=[staff_row(1, 5)])
    second = source.delta(upserts=[staff_row(2, 5)])
    third = source.delta(deletes=[source.key(staff_row(3))])

    held = apply(store, *third)  # N+2 before N+1
    assert held.held and "builds on sequence 3" in held.reason
    assert apply(store, *first).applied
    assert apply(store, *first).skipped  # replay
    assert apply(store, *snap).skipped  # older snapshot
    assert apply(store, *second).applied
    assert apply(store, *third).applied
    assert table_contents(db_url, TABLE, STAFF_SCHEMA) == source.canonical_set()
    assert store.position(source.subscription).sequence == 4  # type: ignore[union-attr]


def test_snapshot_replaces_everything(store: TableStore, db_url: str) -> None:
    source = Source()
    apply(store, *source.snapshot([staff_row(i) for i in range(50)]))
    apply(store, *source.delta(upserts=[staff_row(100)]))
    result = apply(store, *source.snapshot([staff_row(i, 3) for i in range(20, 40)]))
    assert result.applied and result.rows == 20
    assert table_contents(db_url, TABLE, STAFF_SCHEMA) == source.canonical_set()
    # an empty snapshot empties the table
    result = apply(store, *source.snapshot([]))
    assert result.applied and table_contents(db_url, TABLE, STAFF_SCHEMA) == set()
    assert store.verify(source.subscription).match


def test_first_package_may_be_a_delta(store: TableStore, db_url: str) -> None:
    source = Source()
    result = apply(store, *source.delta(upserts=[staff_row(i) for i in range(5)]))
    assert result.applied and result.match
    assert table_contents(db_url, TABLE, STAFF_SCHEMA) == source.canonical_set()


@pytest.mark.parametrize(
    ("mutate", "column", "reason"),
    [
        (lambda r: r.__setitem__(1, None), "XM", "NOT NULL"),
        (lambda r: r.__setitem__(6, "2026-11-25 13:15"), "UPDATETIME", "does not match the format"),
        (lambda r: r.__setitem__(6, "2026-02-30 13:15:36"), "UPDATETIME", "not a valid date/time"),
        (lambda r: r.__setitem__(4, "1.5"), "GZ", "canonical form"),
        (lambda r: r.__setitem__(4, "123456789.00"), "GZ", "canonical form"),
        (lambda r: r.__setitem__(3, "2001-02-29"), "CSRQ", "day is out of range"),
        (lambda r: r.__setitem__(0, "T" * 21), "GH", "21 characters long"),
        (lambda r: r.__setitem__(2, "男女"), "XB", "2 characters long"),
    ],
)
def test_a_bad_row_rejects_the_whole_package(
    store: TableStore, db_url: str, mutate, column: str, reason: str
) -> None:  # type: ignore[no-untyped-def]
    source = Source()
    apply(store, *source.snapshot([staff_row(i) for i in range(30)]))
    before = table_contents(db_url, TABLE, STAFF_SCHEMA)
    bad = staff_row(7000)
    mutate(bad)
    rows = [staff_row(i, 2) for i in range(10)] + [bad] + [staff_row(i, 2) for i in range(10, 20)]
    for package in (source.delta(upserts=rows), source.snapshot(rows)):
        with pytest.raises(RowRejected) as info:
            apply(store, *package)
        assert info.value.column == column
        assert info.value.key == [bad[0]]
        assert reason in str(info.value)
        assert table_contents(db_url, TABLE, STAFF_SCHEMA) == before
    assert store.position(source.subscription).sequence == 1  # type: ignore[union-attr]


def test_malformed_payloads_are_rejected(store: TableStore, db_url: str) -> None:
    source = Source()
    apply(store, *source.snapshot([staff_row(i) for i in range(5)]))
    before = table_contents(db_url, TABLE, STAFF_SCHEMA)
    header, _ = source.delta(upserts=[staff_row(1)])
    cases = [
        encode_record("U", staff_row(1)) + encode_record("U", staff_row(1, 2)),  # same key twice
        encode_record("U", staff_row(1))[:-1],  # no final newline
        b'U,"T1"\n',  # too few fields
        encode_record("D", staff_row(1)),  # delete carrying values
    ]
    for payload in cases:
        with pytest.raises(PayloadMalformed):
            apply(store, header, payload)
    snap_header, _ = source.snapshot([staff_row(1)])
    with pytest.raises(PayloadMalformed):  # delete in a snapshot
        apply(store, snap_header, encode_record("D", [staff_row(1)[0]] + [None] * 8))
    with pytest.raises(PayloadMalformed):  # duplicate key in a snapshot: the staging PK refuses it
        apply(store, snap_header, encode_record("U", staff_row(1)) * 2)
    assert table_contents(db_url, TABLE, STAFF_SCHEMA) == before


def test_snapshot_whose_rows_do_not_match_its_signed_digest_is_rejected(
    store: TableStore, db_url: str
) -> None:
    source = Source()
    apply(store, *source.snapshot([staff_row(i) for i in range(5)]))
    header, _ = source.snapshot([staff_row(i) for i in range(5)])
    payload = b"".join(encode_record("U", staff_row(i, 1 if i == 2 else 0)) for i in range(5))
    with pytest.raises(DigestMismatch) as info:
        apply(store, header, payload)
    assert info.value.buckets == [bucket_of(encode_values([staff_row(2)[0]]).encode())]
    assert store.position(source.subscription).sequence == 1  # type: ignore[union-attr]


def test_delta_digest_mismatch_is_reported_with_buckets(store: TableStore, db_url: str) -> None:
    source = Source()
    apply(store, *source.snapshot([staff_row(i) for i in range(40)]))
    # a local change to a row the delta then replaces: the old row read back is not the one
    # the agent applied, so the digest no longer matches the platform's, in that row's bucket
    _tamper(db_url, "UPDATE {t} SET {c} = 'tampered' WHERE {k} = 'T000030'", "BZ")
    result = apply(store, *source.delta(upserts=[staff_row(30, 1)]))
    assert result.applied and result.match is False
    assert result.mismatched_buckets == [bucket_of(encode_values(["T000030"]).encode())]


def _tamper(url: str, template: str, column: str = "BZ") -> None:
    engine = sa.create_engine(url)
    q = engine.dialect.identifier_preparer.quote_identifier
    with engine.begin() as conn:
        conn.exec_driver_sql(template.format(t=q(TABLE), c=q(column), k=q("GH")))
    engine.dispose()


def test_verify_finds_local_modifications_and_names_buckets(store: TableStore, db_url: str) -> None:
    source = Source()
    apply(store, *source.snapshot([staff_row(i) for i in range(200)]))
    assert store.verify(source.subscription).match
    _tamper(db_url, "UPDATE {t} SET {c} = 'changed behind the agent' WHERE {k} = 'T000017'")
    _tamper(db_url, "DELETE FROM {t} WHERE {k} = 'T000042'")
    _tamper(
        db_url,
        "INSERT INTO {t} ({k}, XM, UPDATETIME) VALUES ('X1', '入侵', '2026-01-01 00:00:00')".replace(
            "XM", "{xm}"
        )
        .replace("UPDATETIME", "{up}")
        .replace("{xm}", '"XM"' if "mysql" not in db_url else "`XM`")
        .replace("{up}", '"UPDATETIME"' if "mysql" not in db_url else "`UPDATETIME`"),
    )
    result = store.verify(source.subscription)
    assert not result.match
    assert result.rows == 200
    expected = {bucket_of(encode_values([k]).encode()) for k in ("T000017", "T000042", "X1")}
    assert set(result.mismatched_buckets) == expected
    assert result.matches_expected is False


def test_revocation_purges_table_and_state(store: TableStore, db_url: str) -> None:
    source = Source()
    apply(store, *source.snapshot([staff_row(i) for i in range(25)]))
    result = store.purge(source.subscription)
    assert result.rows_deleted == 25 and result.table_dropped
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        assert not sa.inspect(conn).has_table(TABLE)
        catalog = conn.exec_driver_sql("SELECT COUNT(*) FROM edu_sync_catalog", ()).scalar()
        digest = conn.exec_driver_sql("SELECT digest FROM edu_sync_state", ()).scalar()
    engine.dispose()
    assert catalog == 0 and digest is None
    position = store.position(source.subscription)
    assert position is not None and position.revoked
    with pytest.raises(SubscriptionRevoked):
        apply(store, *source.delta(upserts=[staff_row(1)]))
    # a revoke package does the same through apply()
    other = Source(subscription="sub-2")
    apply(store, *other.snapshot([staff_row(1)]), table="other")
    header, _ = other.snapshot([])
    header.kind = "revoke"
    assert apply(store, header, b"", table="other").status == "revoked"


def test_provenance_catalog(store: TableStore, db_url: str) -> None:
    source = Source()
    apply(store, *source.snapshot([staff_row(1)]))
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        row = conn.exec_driver_sql(
            "SELECT table_name, resource_name, provider, sharing_type, security_level, agreement_id, "
            "last_sequence, last_applied_at, notice FROM edu_sync_catalog",
            (),
        ).one()
    engine.dispose()
    assert row[0] == TABLE and row[1] == "人事处数据-教职工基本信息" and row[2] == "人事处"
    assert row[3:7] == ("authorised", "二级", "AGR-2026-001", 1)
    assert row[7] and "人事处" in row[8]


def test_column_comments_where_the_database_has_them(store: TableStore, db_url: str) -> None:
    source = Source()
    apply(store, *source.snapshot([staff_row(1)]))
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        columns = {c["name"]: c for c in sa.inspect(conn).get_columns(TABLE)}
        pk = sa.inspect(conn).get_pk_constraint(TABLE)["constrained_columns"]
    engine.dispose()
    assert pk == ["GH"]
    assert columns["XM"]["nullable"] is False and columns["XB"]["nullable"] is True
    if not db_url.startswith("sqlite"):
        assert columns["GH"]["comment"] == "工号：教职工工号"
        assert "YYYY-MM-DD HH:MM:SS" in columns["UPDATETIME"]["comment"]


def test_compatible_schema_change_adds_a_nullable_column(store: TableStore, db_url: str) -> None:
    source = Source()
    apply(store, *source.snapshot([staff_row(i) for i in range(20)]))
    new_schema = [*copy.deepcopy(STAFF_SCHEMA), {"name": "ZC", "type": "VARCHAR2(30)", "label": "职称"}]
    source.schema = new_schema
    from protocol.canonical import columns_from_schema

    source.columns = columns_from_schema(new_schema)
    source.rows = {k: [*v, None] for k, v in source.rows.items()}
    result = apply(store, *source.delta(upserts=[[*staff_row(3, 1), "教授"], [*staff_row(99), None]]))
    assert result.applied and result.added_columns == ["ZC"] and result.match
    assert table_contents(db_url, TABLE, new_schema) == source.canonical_set()
    assert store.verify(source.subscription).match
    # and a snapshot with the wider schema swaps in fine
    assert apply(store, *source.snapshot([[*staff_row(i), "讲师"] for i in range(5)])).match


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s.pop(8),  # dropped column
        lambda s: s[1].update(type="NVARCHAR2(10)"),  # narrowing
        lambda s: s[4].update(type="NUMBER(10,3)"),  # re-typed
        lambda s: s[1].update(primary_key=True),  # key change
        lambda s: s.append({"name": "ZC", "type": "VARCHAR2(30)", "not_null": True}),  # NOT NULL added column
    ],
)
def test_incompatible_schema_change_stops_the_subscription(store: TableStore, db_url: str, change) -> None:  # type: ignore[no-untyped-def]
    source = Source()
    apply(store, *source.snapshot([staff_row(i) for i in range(10)]))
    before = table_contents(db_url, TABLE, STAFF_SCHEMA)
    new_schema = copy.deepcopy(STAFF_SCHEMA)
    change(new_schema)
    source.schema = new_schema
    for header, payload in (source.delta(), source.snapshot([])):
        with pytest.raises(SchemaIncompatible):
            apply(store, header, payload)
    assert table_contents(db_url, TABLE, STAFF_SCHEMA) == before
    assert store.position(source.subscription).sequence == 1  # type: ignore[union-attr]


HOSTILE = [
    'staff"; DROP TABLE edu_sync_state; --',
    "it's `odd`",
    "select",
    "学生 成绩表",
    "a%s%%b",
]


@pytest.mark.parametrize("table", HOSTILE)
def test_hostile_table_and_column_names(store: TableStore, db_url: str, table: str) -> None:
    schema = [
        {"name": 'id"; --', "type": "NUMBER(10)", "primary_key": True},
        {"name": "order", "type": "VARCHAR2(20)"},
        {"name": "`x`; DELETE", "type": "NUMBER(5,2)"},
        {"name": "姓名", "type": "NVARCHAR2(10)"},
        {"name": "%(p)s", "type": "DATE"},
        {"name": "op", "type": "CHAR(1)"},  # the name a staged delta's operation column would take
    ]
    source = Source(schema)
    rows = [[str(i), f"o{i}", f"{i}.50", f"名{i}", "2026-01-02 03:04:05", "DU"[i % 2]] for i in range(30)]
    assert apply(store, *source.snapshot(rows), table=table).match
    assert apply(
        store, *source.delta(upserts=[["3", None, "0.00", "改", None, "D"]], deletes=[("4",)]), table=table
    ).match
    assert table_contents(db_url, table, schema) == source.canonical_set()
    assert store.verify(source.subscription).match
    assert store.purge(source.subscription).rows_deleted == 29


@pytest.mark.parametrize(
    "name",
    ["", " lead", "trail ", "new\nline", "tab\there", "x" * 64, "表" * 22, "edu_sync_state", "EDU_SYNC_x"],
)
def test_unusable_names_are_refused(store: TableStore, name: str) -> None:
    source = Source()
    with pytest.raises((InvalidName, UnsupportedPackage)):
        apply(store, *source.snapshot([staff_row(1)]), table=name)
    bad_schema = copy.deepcopy(STAFF_SCHEMA)
    bad_schema[1]["name"] = name or "x\x00"
    with pytest.raises((InvalidName, UnsupportedPackage)):
        apply(store, *Source(bad_schema, subscription="s2").snapshot([staff_row(1)]), table="ok")


def test_foreign_tables_are_never_touched(store: TableStore, db_url: str) -> None:
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE users_own (id INTEGER PRIMARY KEY)")
    engine.dispose()
    with pytest.raises(TableEnvironmentError, match="not managed by the agent"):
        apply(store, *Source().snapshot([staff_row(1)]), table="users_own")
    apply(store, *Source().snapshot([staff_row(1)]))
    with pytest.raises(TableEnvironmentError, match="belongs to subscription"):
        apply(store, *Source(subscription="intruder").snapshot([staff_row(1)]))


def test_unknown_declared_type_is_rejected(store: TableStore) -> None:
    header, payload = Source().snapshot([])
    header.schema = copy.deepcopy(STAFF_SCHEMA)
    header.schema[2]["type"] = "GEOMETRY"
    with pytest.raises(UnsupportedPackage, match="GEOMETRY"):
        apply(store, header, payload)
