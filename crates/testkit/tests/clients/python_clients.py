"""Real Python clients against a running streamhouse: psycopg 3 (server-side
parameters, text and binary results, transactions) and ADBC's Flight SQL
driver (metadata, Arrow results, parameters). Usage:
    python3 python_clients.py PG_PORT FLIGHT_PORT
Exits non-zero with a message on the first mismatch."""

import sys
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal

import adbc_driver_flightsql.dbapi as flight_sql
import psycopg

pg_port, flight_port = sys.argv[1], sys.argv[2]

# --- psycopg 3: extended protocol with server-side parameter binding -------
with psycopg.connect(f"host=127.0.0.1 port={pg_port} dbname=streamhouse user=py") as conn:
    with conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE py_items (id BIGINT PRIMARY KEY, name TEXT, price DOUBLE PRECISION, day DATE, ok BOOLEAN)"
        )
        cur.executemany(
            "INSERT INTO py_items VALUES (%s, %s, %s, %s, %s)",
            [(1, "a", 1.5, date(2024, 1, 2), True), (2, None, None, None, None), (3, "c", 3.0, date(2024, 3, 4), False)],
        )
    conn.commit()

    with conn.cursor() as cur:
        cur.execute("SELECT id, name, price, day, ok FROM py_items WHERE id = %s", (1,))
        row = cur.fetchone()
        assert row == (1, "a", 1.5, date(2024, 1, 2), True), row
        cur.execute("SELECT id, name FROM py_items WHERE name = %s", ("c",))
        assert cur.fetchall() == [(3, "c")]
        cur.execute("SELECT count(*) FROM py_items WHERE price > %s", (1.0,), prepare=True)
        assert cur.fetchone() == (2,)
        cur.execute("SELECT count(*) FROM py_items WHERE price > %s", (2.0,), prepare=True)
        assert cur.fetchone() == (1,)
    with conn.cursor(binary=True) as cur:
        cur.execute("SELECT id, name, price, day FROM py_items ORDER BY id")
        rows = cur.fetchall()
        assert rows == [(1, "a", 1.5, date(2024, 1, 2)), (2, None, None, None), (3, "c", 3.0, date(2024, 3, 4))], rows
    # Every type psycopg decodes, in both result formats.
    typed = (
        "SELECT 12.34::numeric(10,2), '13:14:15'::time, INTERVAL '1 day 2 hours', "
        "'2024-02-29 13:14:15+02'::timestamptz, '2024-02-29 13:14:15'::timestamp, decode('0102ff', 'hex'), "
        "make_array(1, 2, 3), make_array('a', NULL), 1.5::real, 7::smallint, '{\"k\": 1}'::jsonb, "
        "CAST(NULL AS INTERVAL), CAST(NULL AS NUMERIC)"
    )
    expected = (
        Decimal("12.34"),
        time(13, 14, 15),
        timedelta(days=1, hours=2),
        datetime(2024, 2, 29, 11, 14, 15, tzinfo=timezone.utc),
        datetime(2024, 2, 29, 13, 14, 15),
        b"\x01\x02\xff",
        [1, 2, 3],
        ["a", None],
        1.5,
        7,
        '{"k": 1}',
        None,
        None,
    )
    for binary in (False, True):
        with conn.cursor(binary=binary) as cur:
            cur.execute(typed)
            row = cur.fetchone()
            assert row == expected, (binary, row)
    conn.commit()

    with conn.cursor() as cur:
        try:
            cur.execute("SELECT * FROM py_missing")
            raise AssertionError("expected an error")
        except psycopg.errors.UndefinedTable as e:
            assert e.sqlstate == "42P01", e.sqlstate
    conn.rollback()
    with conn.cursor() as cur:
        cur.execute("SELECT version()")
        assert cur.fetchone()[0].startswith("PostgreSQL 16.6"), "version"
    conn.commit()

# --- ADBC Flight SQL: metadata and Arrow results ------------------------------
with flight_sql.connect(f"grpc://127.0.0.1:{flight_port}") as conn:
    objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
    tables = [
        table["table_name"]
        for catalog in objects
        for schema in catalog["catalog_db_schemas"] or []
        for table in schema["db_schema_tables"] or []
    ]
    assert "py_items" in tables, tables
    schema = conn.adbc_get_table_schema("py_items")
    assert schema.names == ["id", "name", "price", "day", "ok"], schema.names
    with conn.cursor() as cur:
        cur.execute("SELECT id, name, price FROM py_items ORDER BY id")
        table = cur.fetch_arrow_table()
        assert table.num_rows == 3, table
        assert table.column("id").to_pylist() == [1, 2, 3]
        assert table.column("name").to_pylist() == ["a", None, "c"]
        cur.execute("SELECT name FROM py_items WHERE id = $1", parameters=(3,))
        assert cur.fetch_arrow_table().column(0).to_pylist() == ["c"]
        cur.execute("CREATE TABLE py_from_flight AS SELECT id FROM py_items")
        cur.fetchall()
        # Every statement kind through cursor.execute does what it says, with ? or $n parameters.
        cur.execute("CREATE TABLE py_kinds (id BIGINT PRIMARY KEY, v TEXT)")
        cur.execute("INSERT INTO py_kinds VALUES (?, ?)", parameters=(1, "one"))
        cur.execute("INSERT INTO py_kinds VALUES ($1, $2)", parameters=(2, "two"))
        cur.execute("UPDATE py_kinds SET v = ? WHERE id = ?", parameters=("uno", 1))
        cur.execute("SELECT id, v FROM py_kinds WHERE id >= ? ORDER BY id", parameters=(1,))
        assert cur.fetchall() == [(1, "uno"), (2, "two")]
        cur.execute("CREATE VIEW py_kinds_view AS SELECT v FROM py_kinds WHERE id = 2")
        cur.execute("SELECT v FROM py_kinds_view")
        assert cur.fetchall() == [("two",)]
        cur.execute("DELETE FROM py_kinds WHERE id = ?", parameters=(2,))
        cur.execute("SELECT count(*) FROM py_kinds")
        assert cur.fetchone()[0] == 1
        # SUBSCRIBE streams the table's rows, then each change as it commits.
        sub = conn.cursor()
        sub.execute("SUBSCRIBE TO py_kinds")
        changes = sub.fetch_record_batch()
        first = changes.read_next_batch().to_pylist()
        assert [(r["id"], r["v"], r["_kind"]) for r in first] == [(1, "uno", "+I")], first
        cur.execute("INSERT INTO py_kinds VALUES ($1, $2)", parameters=(5, "five"))
        change = changes.read_next_batch().to_pylist()
        assert [(r["id"], r["v"], r["_kind"]) for r in change] == [(5, "five", "+I")], change
        sub.close()
        cur.execute("DROP VIEW py_kinds_view")
        cur.execute("DROP TABLE py_kinds")
        try:
            cur.execute("SELECT * FROM py_kinds")
            raise AssertionError("the dropped table is still there")
        except flight_sql.Error as e:
            assert "not found" in str(e) or "does not exist" in str(e), e
    # Bulk ingest (CommandStatementIngest): create, then append.
    import pyarrow as pa

    data = pa.table({"id": pa.array(range(50_000), pa.int64()), "label": [f"l{i}" for i in range(50_000)]})
    with conn.cursor() as cur:
        assert cur.adbc_ingest("py_ingested", data, mode="create") == 50_000
        assert cur.adbc_ingest("py_ingested", data.slice(0, 10), mode="append") == 10
        # Parameter batches for a prepared INSERT are written as rows.
        cur.executemany("INSERT INTO py_ingested VALUES ($1, $2)", [(-1, "x"), (-2, "y")])
        cur.execute("SELECT count(*) FROM py_ingested")
        assert cur.fetchone()[0] == 50_012
    conn.commit()

# --- psycopg COPY: text in, CSV out ------------------------------------------
with psycopg.connect(f"host=127.0.0.1 port={pg_port} dbname=streamhouse user=py", autocommit=True) as conn:
    conn.execute("CREATE TABLE py_copy (id BIGINT PRIMARY KEY, name TEXT)")
    with conn.cursor() as cur:
        with cur.copy("COPY py_copy (id, name) FROM STDIN") as copy:
            for i in range(1000):
                copy.write_row((i, f"name {i}" if i % 7 else None))
        with cur.copy("COPY (SELECT id, name FROM py_copy WHERE id < 3 ORDER BY id) TO STDOUT (FORMAT csv)") as copy:
            out = b"".join(bytes(chunk) for chunk in copy)
    assert out == b"0,\n1,name 1\n2,name 2\n", out
    assert conn.execute("SELECT count(*), count(name) FROM py_copy").fetchone() == (1000, 857)

with psycopg.connect(f"host=127.0.0.1 port={pg_port} dbname=streamhouse user=py", autocommit=True) as conn:
    count = conn.execute("SELECT count(*) FROM py_from_flight").fetchone()[0]
    assert count == 3, count

print("python clients ok")
