"""ADBC's PostgreSQL driver (libpq, COPY-binary results) against a running
streamhouse: its start-up type query resolves our types, and a query
comes back as a typed Arrow table. Usage:
    python3 adbc_postgresql.py PG_PORT"""

import sys

import adbc_driver_postgresql.dbapi as adbc_pg
import pyarrow as pa

port = sys.argv[1]
with adbc_pg.connect(f"postgresql://adbc@127.0.0.1:{port}/streamhouse") as conn:
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE adbc_items (id BIGINT PRIMARY KEY, name VARCHAR(10), ok BOOLEAN, x DOUBLE PRECISION)")
        cur.execute("INSERT INTO adbc_items VALUES (1, 'a', true, 0.5), (2, NULL, false, NULL)")
        cur.execute("SELECT id, name, ok, x FROM adbc_items ORDER BY id")
        table = cur.fetch_arrow_table()
        assert table.schema.types == [pa.int64(), pa.string(), pa.bool_(), pa.float64()], table.schema
        assert table.to_pylist() == [
            {"id": 1, "name": "a", "ok": True, "x": 0.5},
            {"id": 2, "name": None, "ok": False, "x": None},
        ], table.to_pylist()
        # adbc_ingest: CREATE TABLE, then binary COPY (which ends without the -1 trailer).
        cur.adbc_ingest("adbc_ingested", pa.table({"a": [1, 2, 3], "b": ["x", None, "z"]}), mode="create")
        cur.execute("SELECT a, b FROM adbc_ingested ORDER BY a")
        rows = cur.fetchall()
        assert rows == [(1, "x"), (2, None), (3, "z")], rows
        cur.execute("CREATE VIEW adbc_view AS SELECT id, name FROM adbc_items")
        cur.execute("CREATE MATERIALIZED VIEW adbc_counts AS SELECT ok, count(*) AS n FROM adbc_items GROUP BY ok")
    # adbc_get_objects: the driver's catalog queries (relkind = ANY($2) with a
    # text array, CROSS JOIN unnest(conkey) AS k) list relations, columns and keys.
    objects = conn.adbc_get_objects(depth="all", db_schema_filter="public").read_all().to_pylist()
    tables = {
        table["table_name"]: table
        for catalog in objects
        if catalog["catalog_name"] == "streamhouse"
        for schema in catalog["catalog_db_schemas"] or []
        if schema["db_schema_name"] == "public"
        for table in schema["db_schema_tables"] or []
    }
    kinds = {name: table["table_type"] for name, table in tables.items() if name.startswith("adbc_")}
    expected = {"adbc_items": "table", "adbc_ingested": "table", "adbc_view": "view", "adbc_counts": "materialized view"}
    assert kinds == expected, kinds
    # The driver does not order its column query; ordinal_position is attnum.
    def columns(table):
        return [c["column_name"] for c in sorted(table["table_columns"], key=lambda c: c["ordinal_position"])]

    assert columns(tables["adbc_items"]) == ["id", "name", "ok", "x"], tables["adbc_items"]["table_columns"]
    keys = [(c["constraint_type"], c["constraint_column_names"]) for c in tables["adbc_items"]["table_constraints"]]
    assert keys == [("PRIMARY KEY", ["id"])], keys
    assert columns(tables["adbc_counts"]) == ["ok", "n"], tables["adbc_counts"]["table_columns"]
print("adbc postgresql ok")
