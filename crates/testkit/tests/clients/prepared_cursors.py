"""Drivers that prepare statements, on cursors: psycopg 3 past its prepare
threshold (it prepares a statement after 5 executions) and asyncpg (which
prepares every statement). FETCH from a query cursor and from a SUBSCRIBE
cursor must decode as described. Usage:
    python3 prepared_cursors.py PG_PORT
Exits non-zero with a message on the first mismatch."""

import asyncio
import sys

import asyncpg
import psycopg

port = int(sys.argv[1])

# --- psycopg 3: the same FETCH executed past the prepare threshold ---------
with psycopg.connect(f"host=127.0.0.1 port={port} dbname=streamhouse user=py", autocommit=True) as conn:
    conn.prepare_threshold = 2
    conn.execute("CREATE TABLE pc (k BIGINT PRIMARY KEY, v TEXT)")
    conn.execute("INSERT INTO pc SELECT value, 'v' || value FROM generate_series(1, 20) AS g(value)")
    conn.execute("BEGIN")
    conn.execute("DECLARE c CURSOR FOR SELECT k, v FROM pc ORDER BY k")
    seen = []
    for _ in range(10):
        cur = conn.execute("FETCH 2 FROM c")
        assert [d.name for d in cur.description] == ["k", "v"], cur.description
        seen.extend(cur.fetchall())
    assert seen == [(i, f"v{i}") for i in range(1, 21)], seen
    conn.execute("COMMIT")

    conn.execute("DECLARE s CURSOR WITH HOLD FOR SUBSCRIBE TO pc")
    keys = []
    for i in range(8):
        if i == 4:
            conn.execute("INSERT INTO pc VALUES (100, 'new')")
        cur = conn.execute("FETCH ALL s WITH (timeout = '200ms')")
        names = [d.name for d in cur.description]
        assert "k" in names and "v" in names, names
        keys.extend(row[names.index("k")] for row in cur.fetchall())
    assert sorted(keys) == list(range(1, 21)) + [100], keys
    conn.execute("CLOSE s")


# --- asyncpg: every statement prepared, rows decoded by the description ----
async def with_asyncpg():
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="apg", database="streamhouse")
    try:
        async with conn.transaction():
            await conn.execute("DECLARE c CURSOR FOR SELECT k, v FROM pc WHERE k <= 20 ORDER BY k")
            seen = []
            for _ in range(11):
                rows = await conn.fetch("FETCH 2 FROM c")
                seen.extend((r["k"], r["v"]) for r in rows)
            assert seen == [(i, f"v{i}") for i in range(1, 21)], seen
        await conn.execute("DECLARE s CURSOR WITH HOLD FOR SUBSCRIBE TO pc")
        rows = await conn.fetch("FETCH ALL s WITH (timeout = '500ms')")
        assert sorted(r["k"] for r in rows) == list(range(1, 21)) + [100], rows
        await conn.execute("INSERT INTO pc VALUES (101, 'newer')")
        rows = await conn.fetch("FETCH ALL s WITH (timeout = '2s')")
        assert [r["k"] for r in rows] == [101], rows
        await conn.execute("CLOSE s")
        # A prepared statement object, executed many times.
        stmt = await conn.prepare("SELECT v FROM pc WHERE k = $1")
        for k in (1, 7, 20):
            assert await stmt.fetchval(k) == f"v{k}"
    finally:
        await conn.close()


asyncio.run(with_asyncpg())
print("prepared cursors ok")
