"""TPC-H on DuckDB over plain Parquet files, for benches/queries.rs.

    python3 duckdb_tpch.py PARQUET_DIR QUERIES_FILE RUNS THREADS

QUERIES_FILE holds `-- name` lines each followed by one query. Each query
runs RUNS times (the first a warm-up when RUNS > 1); prints per query
`T<TAB>name<TAB>best ms`, then its rows as `R<TAB>name<TAB>cell<TAB>cell…`
(NULL as NULL, floats with all digits; the caller compares with a tolerance).
"""
import sys
import time

import duckdb

parquet_dir, queries_file, runs, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
con = duckdb.connect()
con.execute(f"SET threads = {threads}")
for table in ["region", "nation", "supplier", "customer", "part", "partsupp", "orders", "lineitem"]:
    con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{parquet_dir}/{table}.parquet')")

queries = []
for block in open(queries_file).read().split("-- ")[1:]:
    name, sql = block.split("\n", 1)
    queries.append((name.strip(), sql))

for name, sql in queries:
    times = []
    rows = None
    for _ in range(runs):
        started = time.perf_counter()
        rows = con.execute(sql).fetchall()
        times.append((time.perf_counter() - started) * 1000.0)
    measured = times[1:] if len(times) > 1 else times
    print(f"T\t{name}\t{min(measured):.3f}")
    for row in rows:
        print("R\t" + name + "\t" + "\t".join("NULL" if v is None else str(v) for v in row))
    sys.stdout.flush()
