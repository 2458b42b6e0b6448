"""Each real service the suite relies on answers (fails under EDU_REQUIRE_SERVICES=1 if not)."""

import sqlalchemy as sa


def test_each_database_answers(db_url: str) -> None:
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar() == 1
    engine.dispose()
