"""SQLAlchemy 2 (its default psycopg 3 driver, and psycopg2) and pandas
against a running streamhouse, doing what applications and notebooks do:
connect, reflect tables/views/materialized views with their columns, types
and keys, use savepoints, and move DataFrames in and out. Usage:
    python3 sqlalchemy_pandas.py PG_PORT
Exits non-zero with a message on the first mismatch."""

import sys

import pandas as pd
import sqlalchemy as sa

port = sys.argv[1]

for n, driver in enumerate(["postgresql", "postgresql+psycopg2"]):
    engine = sa.create_engine(f"{driver}://app@127.0.0.1:{port}/streamhouse")
    orders, eu, totals, frame = f"sa_orders{n}", f"sa_eu{n}", f"sa_totals{n}", f"sa_frame{n}"
    with engine.connect() as conn:
        conn.execute(sa.text(
            f"CREATE TABLE {orders} (id BIGINT PRIMARY KEY, region VARCHAR(20) NOT NULL, "
            f"amount NUMERIC(12,2), created TIMESTAMP, note TEXT)"))
        conn.execute(sa.text(f"INSERT INTO {orders} VALUES (1, 'eu', 10.50, '2024-01-02 03:04:05', 'a'), "
                             f"(2, 'us', 3.25, NULL, NULL), (3, 'eu', 1.00, NULL, 'c')"))
        conn.execute(sa.text(f"CREATE VIEW {eu} AS SELECT id, region FROM {orders} WHERE region = 'eu'"))
        conn.execute(sa.text(
            f"CREATE MATERIALIZED VIEW {totals} AS SELECT region, sum(amount) AS total FROM {orders} GROUP BY region"))
        conn.commit()

        # A savepoint around a failing statement leaves the transaction usable.
        with conn.begin():
            nested = conn.begin_nested()
            try:
                conn.execute(sa.text("SELECT * FROM no_such_table"))
                raise AssertionError("the missing table was found")
            except sa.exc.ProgrammingError:
                nested.rollback()
            assert conn.execute(sa.text(f"SELECT count(*) FROM {orders}")).scalar() == 3

    inspector = sa.inspect(engine)
    schemas = inspector.get_schema_names()
    assert "public" in schemas and "sys" in schemas, schemas
    assert orders in inspector.get_table_names(), inspector.get_table_names()
    views = inspector.get_view_names()
    assert eu in views and totals not in views, views
    assert totals in inspector.get_materialized_view_names(), inspector.get_materialized_view_names()
    columns = [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(orders)]
    assert columns == [
        ("id", "BIGINT", False),
        ("region", "VARCHAR(20)", False),
        ("amount", "NUMERIC(12, 2)", True),
        ("created", "TIMESTAMP", True),
        ("note", "TEXT", True),
    ], columns
    view_columns = [(c["name"], str(c["type"])) for c in inspector.get_columns(eu)]
    assert view_columns == [("id", "BIGINT"), ("region", "VARCHAR(20)")], view_columns
    pk = inspector.get_pk_constraint(orders)
    assert pk["constrained_columns"] == ["id"] and pk["name"] == f"{orders}_pkey", pk
    assert inspector.get_foreign_keys(orders) == []
    assert inspector.get_indexes(orders) == []  # the primary key's index is the constraint's
    assert inspector.get_unique_constraints(orders) == []

    # pandas: read a query with parameters, a whole table, and write a frame.
    df = pd.read_sql(sa.text(f"SELECT id, region FROM {orders} WHERE amount > :m ORDER BY id"), engine, params={"m": 2})
    assert df.to_dict("list") == {"id": [1, 2], "region": ["eu", "us"]}, df
    table = pd.read_sql_table(orders, engine)
    assert list(table.columns) == ["id", "region", "amount", "created", "note"], table.columns
    assert sorted(table["id"].tolist()) == [1, 2, 3], table
    out = pd.DataFrame({"k": [1, 2, 3], "name": ["x", "y", None], "score": [0.5, 1.5, 2.5]})
    out.to_sql(frame, engine, index=False, if_exists="replace")
    out.to_sql(frame, engine, index=False, if_exists="replace")  # reflects and replaces the first
    back = pd.read_sql(f"SELECT k, name, score FROM {frame} ORDER BY k", engine)
    assert back["k"].tolist() == [1, 2, 3] and back["score"].tolist() == [0.5, 1.5, 2.5], back
    assert back["name"].tolist()[:2] == ["x", "y"] and back["name"].isna().tolist()[2], back
    engine.dispose()

print("sqlalchemy ok")
