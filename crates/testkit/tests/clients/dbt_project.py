"""dbt-postgres against a running streamhouse: a project with a seed, a
table model, a view model over it and schema tests, built with
`dbt seed && dbt run && dbt test` twice in a row (the second run swaps the
rebuilt models into place with ALTER … RENAME and drops the old ones with
CASCADE), then the answers checked with psycopg. Usage:
    python3 dbt_project.py PG_PORT
Exits non-zero with a message on the first failure."""

import os
import sys
import tempfile

import psycopg
from dbt.cli.main import dbtRunner

port = sys.argv[1]

FILES = {
    "dbt_project.yml": """
name: shop
version: '1.0'
profile: shop
seed-paths: ["seeds"]
model-paths: ["models"]
""",
    "profiles.yml": f"""
shop:
  target: dev
  outputs:
    dev:
      type: postgres
      host: 127.0.0.1
      port: {port}
      user: dbt
      password: unused
      dbname: streamhouse
      schema: analytics
      threads: 1
""",
    "seeds/raw_orders.csv": "id,region,amount\n1,eu,10.5\n2,us,3.25\n3,eu,1.0\n",
    "models/orders_by_region.sql": """
{{ config(materialized='table') }}
select region, sum(amount) as total, count(*) as n from {{ ref('raw_orders') }} group by region
""",
    "models/eu_orders.sql": """
{{ config(materialized='view') }}
select o.id, o.amount, r.n as region_orders
from {{ ref('raw_orders') }} o join {{ ref('orders_by_region') }} r on r.region = o.region
where o.region = 'eu'
""",
    "models/schema.yml": """
version: 2
models:
  - name: orders_by_region
    columns:
      - name: region
        tests: [unique, not_null]
  - name: eu_orders
    columns:
      - name: id
        tests: [unique, not_null]
""",
}

with tempfile.TemporaryDirectory() as project:
    for path, text in FILES.items():
        full = os.path.join(project, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as f:
            f.write(text)
    os.environ["DBT_SEND_ANONYMOUS_USAGE_STATS"] = "false"
    for round_ in (1, 2):
        for command in ("seed", "run", "test"):
            result = dbtRunner().invoke(
                [command, "--project-dir", project, "--profiles-dir", project, "--log-path",
                 os.path.join(project, "logs"), "--target-path", os.path.join(project, "target")])
            if not result.success:
                log = open(os.path.join(project, "logs", "dbt.log")).read()[-6000:]
                raise SystemExit(f"dbt {command} (round {round_}) failed: {result.exception}\n{log}")
            print(f"dbt {command} ok (round {round_})")

with psycopg.connect(f"host=127.0.0.1 port={port} dbname=streamhouse user=check", autocommit=True) as conn:
    rows = conn.execute("SELECT region, total, n FROM analytics.orders_by_region ORDER BY region").fetchall()
    assert rows == [("eu", 11.5, 2), ("us", 3.25, 1)], rows
    rows = conn.execute("SELECT id, amount, region_orders FROM analytics.eu_orders ORDER BY id").fetchall()
    assert rows == [(1, 10.5, 2), (3, 1.0, 2)], rows
    kinds = dict(conn.execute(
        "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'analytics' AND c.relkind IN ('r', 'v', 'm')").fetchall())
    # Nothing left behind by the swaps (x__dbt_tmp, x__dbt_backup).
    assert kinds == {"raw_orders": "r", "orders_by_region": "r", "eu_orders": "v"}, kinds

print("dbt project ok")
