"""Fixtures for real services: SQLite, PostgreSQL, MariaDB (and sshd, in tests/sshd.py).

Without a service the dependent tests skip with the reason; with
``EDU_REQUIRE_SERVICES=1`` (CI) they fail instead, so nothing is silently untested.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

PG_URL = os.environ.get("EDU_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MYSQL_URL = os.environ.get("EDU_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
REQUIRE_SERVICES = os.environ.get("EDU_REQUIRE_SERVICES") == "1"

pytest_plugins = ["tests.sshd", "tests.logging_isolation"]


def service_unavailable(what: str, exc: BaseException) -> None:
    """Skip, or fail under EDU_REQUIRE_SERVICES=1, naming the service and the cause."""
    message = f"{what} is not available: {exc}"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message} (EDU_REQUIRE_SERVICES=1)")
    pytest.skip(message)


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'target.db'}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose default schema is a fresh one, dropped afterwards."""
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    schema = _unique("t")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        service_unavailable("PostgreSQL", exc)
    url = sa.make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def mysql_url() -> Iterator[str]:
    """A MariaDB/MySQL URL on a fresh database, dropped afterwards."""
    admin = sa.create_engine(MYSQL_URL, isolation_level="AUTOCOMMIT")
    database = _unique("t")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        service_unavailable("MariaDB/MySQL", exc)
    url = sa.make_url(MYSQL_URL).set(database=database).update_query_dict({"charset": "utf8mb4"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{database}`"))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Each real database in turn."""
    name = {"sqlite": "sqlite_url", "postgresql": "pg_url", "mysql": "mysql_url"}[request.param]
    url: str = request.getfixturevalue(name)
    return url
