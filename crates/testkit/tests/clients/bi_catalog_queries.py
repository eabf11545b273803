"""The catalog, metadata and time-bucketing queries that Grafana, Metabase and
Superset send to a PostgreSQL data source, replayed verbatim against a running
streamhouse, with the answers PostgreSQL 16 gives for the same schema. Usage:
    python3 bi_catalog_queries.py PG_PORT
Exits non-zero with a message on the first mismatch (BI_CONTINUE=1 runs every
query and lists all mismatches before exiting non-zero).

Each query names the file (and repository) it was taken from. Where a tool
builds SQL at run time (Grafana's TypeScript templates, Metabase's HoneySQL,
Superset's SQLAlchemy), the text below is what the tool sends for this schema;
the comment says so. Parameters the tool binds server-side ($n, extended
protocol) are bound here the same way (psycopg's RawCursor); values the tool
interpolates into the text are interpolated here too.

Not replayed, because streamhouse does not answer them yet (README,
compatibility): Grafana's legacy (< 9) query builder's aggregate list
(`pg_aggregate.aggfnoid` as regproc) and findMetricTable (correlated scalar
subqueries with ORDER BY … LIMIT 1); Superset's optional cost estimate (our
EXPLAIN has DataFusion's shape, not a `QUERY PLAN` with `cost=`) and its
query cancel (`pg_terminate_backend` over `pg_stat_activity`; Postgres'
cancel request works, see protocols.rs)."""

import os
import sys
import traceback
from datetime import date, datetime, timezone
from decimal import Decimal

import psycopg
import sqlalchemy as sa

port = sys.argv[1]
DSN = f"host=127.0.0.1 port={port} dbname=streamhouse user=grafana"
KEEP_GOING = os.environ.get("BI_CONTINUE") == "1"
failures = []


def check(label, fn):
    """Runs one replayed query and its assertions; stops the script on the
    first failure unless BI_CONTINUE=1."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - every failure is reported the same way
        sqlstate = getattr(e, "sqlstate", None)
        msg = f"{label}: {type(e).__name__}{f' [{sqlstate}]' if sqlstate else ''}: {str(e).strip()}"
        if not isinstance(e, (AssertionError, psycopg.Error)):
            msg += "\n" + traceback.format_exc()
        if not KEEP_GOING:
            sys.exit(f"bi catalog queries FAILED at {msg}")
        failures.append(msg)


def connect():
    # autocommit, so a failing statement does not poison the ones after it.
    return psycopg.connect(DSN, autocommit=True, cursor_factory=psycopg.RawCursor)


# Grafana (pgx) and Metabase (pgjdbc) send every query through the extended
# protocol (Parse/Bind/Execute), parameters or not; Superset (psycopg2) sends
# simple queries with values interpolated client-side.
EXTENDED = True


def rows(conn, sql, params=None):
    cur = conn.execute(sql, params, prepare=True if EXTENDED else None)
    return cur.fetchall() if cur.description is not None else []


def bi(rs, col=0):
    """Only this script's relations: other suites share the server's public schema."""
    return [r for r in rs if str(r[col]).startswith("bi_")]


# --- the schema every tool looks at ------------------------------------------
with connect() as conn:
    conn.execute("DROP MATERIALIZED VIEW IF EXISTS bi_by_host")
    conn.execute("DROP VIEW IF EXISTS bi_recent")
    conn.execute("DROP TABLE IF EXISTS bi_metrics")
    conn.execute(
        "CREATE TABLE bi_metrics (id BIGINT PRIMARY KEY, ts TIMESTAMP, host VARCHAR(32), "
        "value DOUBLE PRECISION, amount NUMERIC(12,2))"
    )
    conn.execute(
        "INSERT INTO bi_metrics VALUES "
        "(1, '2024-01-01 00:10:00', 'a', 1.5, 10.25), "
        "(2, '2024-01-01 00:50:00', 'b', 2.5, 20.50), "
        "(3, '2024-01-01 01:20:00', 'a', 3.0, 30.00), "
        "(4, '2024-01-02 12:00:00', 'b', 4.0, NULL), "
        "(5, '2023-12-31 23:59:59', 'c', 5.0, 1.00)"
    )
    conn.execute("CREATE VIEW bi_recent AS SELECT id, ts, host, value FROM bi_metrics WHERE ts >= '2024-01-01'")
    conn.execute(
        "CREATE MATERIALIZED VIEW bi_by_host AS SELECT host, count(*) AS n, sum(value) AS total "
        "FROM bi_metrics GROUP BY host"
    )

BI_METRICS_COLUMNS = [
    ("id", "bigint"),
    ("ts", "timestamp without time zone"),
    ("host", "character varying"),
    ("value", "double precision"),
    ("amount", "numeric"),
]

# =============================================================================
# Grafana (grafana/grafana)
# =============================================================================
# Grafana's frontend runs these through the backend (pgx, extended protocol,
# no parameters: the table name is interpolated as a quoted literal).
G_META = "grafana/grafana public/app/plugins/datasource/grafana-postgresql-datasource/postgresMetaQuery.ts"
G_LEGACY = "grafana/grafana public/app/plugins/datasource/postgres/meta_query.ts (legacy query builder, Grafana < 9)"
G_SCHEMA = "grafana/grafana pkg/tsdb/grafana-postgresql-datasource/schema.go"
G_MACROS = "grafana/grafana pkg/tsdb/grafana-postgresql-datasource/macros.go"


def grafana_build_schema_constraint():
    # postgresMetaQuery.ts buildSchemaConstraint()
    return """
          quote_ident(table_schema) IN (
          SELECT
            CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
          FROM
            generate_series(
              array_lower(string_to_array(current_setting('search_path'),','),1),
              array_upper(string_to_array(current_setting('search_path'),','),1)
            ) as i,
            string_to_array(current_setting('search_path'),',') s
          )"""


def grafana_show_schemas():
    # postgresMetaQuery.ts showSchemas()
    return """SELECT schema_name AS "name"
    FROM information_schema.schemata
    WHERE schema_name NOT IN ('information_schema',
                              'pg_catalog',
                              'pg_toast',
                              '_timescaledb_cache',
                              '_timescaledb_catalog',
                              '_timescaledb_internal',
                              '_timescaledb_config',
                              'timescaledb_information',
                              'timescaledb_experimental')
    ORDER BY schema_name"""


def grafana_show_tables(schema=None):
    # postgresMetaQuery.ts showTables(schema?)
    if schema:
        schema_part = "'" + schema.replace("'", "''") + "'"
        return f"""SELECT quote_ident(table_name) AS "table"
      FROM information_schema.tables
      WHERE quote_ident(table_schema) = {schema_part}
      ORDER BY 1"""
    c = grafana_build_schema_constraint()
    return f"""SELECT
    CASE WHEN {c}
      THEN quote_ident(table_name)
      ELSE quote_ident(table_schema) || '.' || quote_ident(table_name)
    END AS "table"
    FROM information_schema.tables
    WHERE quote_ident(table_schema) NOT IN ('information_schema',
                             'pg_catalog',
                             '_timescaledb_cache',
                             '_timescaledb_catalog',
                             '_timescaledb_internal',
                             '_timescaledb_config',
                             'timescaledb_information',
                             'timescaledb_experimental')
    ORDER BY CASE WHEN {c} THEN 0 ELSE 1 END, 1"""


def grafana_get_schema(table):
    # postgresMetaQuery.ts getSchema(table)
    t = "'" + table.replace("'", "''") + "'"
    return f"""SELECT quote_ident(column_name) AS "column", data_type AS "type"
    FROM information_schema.columns
    WHERE
      CASE WHEN array_length(parse_ident({t}),1) = 2
        THEN quote_ident(table_schema) = (parse_ident({t}))[1]
          AND quote_ident(table_name) = (parse_ident({t}))[2]
        ELSE quote_ident(table_name) = {t}
          AND {grafana_build_schema_constraint()}
      END"""


# meta_query.ts (legacy builder) has its own schema constraint, without quote_ident.
GRAFANA_LEGACY_SCHEMA_CONSTRAINT = """
table_schema IN (
  SELECT
    CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
  FROM
    generate_series(
      array_lower(string_to_array(current_setting('search_path'),','),1),
      array_upper(string_to_array(current_setting('search_path'),','),1)
    ) as i,
    string_to_array(current_setting('search_path'),',') s
)"""


def grafana_legacy_table_constraint(table):
    # meta_query.ts buildTableConstraint(table), quoteIdentAsLiteral = '...'
    return GRAFANA_LEGACY_SCHEMA_CONSTRAINT + " AND table_name = " + "'" + table + "'"


def grafana_legacy_column_query(table, kind=None, time_column=None):
    # meta_query.ts buildColumnQuery(type)
    q = "SELECT quote_ident(column_name) FROM information_schema.columns WHERE "
    q += grafana_legacy_table_constraint(table)
    if kind == "time":
        q += " AND data_type IN ('timestamp without time zone','timestamp with time zone','bigint','integer','double precision','real')"
    elif kind == "metric":
        q += " AND data_type IN ('text','character','character varying')"
    elif kind == "value":
        q += " AND data_type IN ('bigint','integer','double precision','real','numeric')"
        q += " AND column_name <> " + "'" + time_column + "'"
    elif kind == "group":
        q += " AND data_type IN ('text','character','character varying','uuid')"
    q += " ORDER BY column_name"
    return q


# The dashboard time range every macro below is expanded for: macros.go
# formats it as RFC3339Nano in UTC and interpolates it as a string literal.
FROM, TO = "2024-01-01T00:00:00Z", "2024-01-01T06:00:00Z"


def grafana_time_filter(col):
    # macros.go "__timeFilter"
    return f"{col} BETWEEN '{FROM}' AND '{TO}'"


def grafana_time_group(col, seconds):
    # macros.go "__timeGroup" (no TimescaleDB): floor(extract(epoch from col)/N)*N
    return f"floor(extract(epoch from {col})/{seconds})*{seconds}"


def grafana_time_group_alias(col, seconds):
    # macros.go "__timeGroupAlias"
    return grafana_time_group(col, seconds) + ' AS "time"'


with connect() as conn:

    def g_version():
        # G_META getVersion(): run by the config page to pick the PG version.
        r = rows(conn, "SELECT current_setting('server_version_num')::int/100 as version")
        assert r == [(1600,)], r

    check("grafana getVersion", g_version)

    def g_timescale():
        # G_META getTimescaleDBVersion()
        r = rows(conn, "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
        assert r == [], r

    check("grafana getTimescaleDBVersion", g_timescale)

    def g_show_schemas():
        # G_META showSchemas() (dataset picker)
        names = [n for (n,) in rows(conn, grafana_show_schemas())]
        assert "public" in names, names
        assert not {"information_schema", "pg_catalog", "pg_toast"} & set(names), names
        assert names == sorted(names), names

    check("grafana showSchemas", g_show_schemas)

    def g_show_tables_schema():
        # G_META showTables('public'): tables and views, not materialized views
        # (information_schema.tables has no matviews).
        r = bi(rows(conn, grafana_show_tables("public")))
        assert r == [("bi_metrics",), ("bi_recent",)], r

    check("grafana showTables(schema)", g_show_tables_schema)

    def g_show_tables():
        # G_META showTables(): tables on the search_path unqualified, first.
        r = [t for (t,) in rows(conn, grafana_show_tables())]
        assert [t for t in r if t.startswith("bi_")] == ["bi_metrics", "bi_recent"], r
        assert "public.bi_metrics" not in r, r
        first_qualified = next((i for i, t in enumerate(r) if "." in t), len(r))
        assert all("." in t for t in r[first_qualified:]), r

    check("grafana showTables()", g_show_tables)

    def g_get_schema():
        # G_META getSchema(table) for the column picker, unqualified and qualified.
        for table in ("bi_metrics", "public.bi_metrics"):
            r = rows(conn, grafana_get_schema(table))
            assert sorted(r) == sorted(BI_METRICS_COLUMNS), (table, r)

    check("grafana getSchema", g_get_schema)

    def g_legacy_tables():
        # G_LEGACY buildTableQuery()
        q = "SELECT quote_ident(table_name) FROM information_schema.tables WHERE "
        q += GRAFANA_LEGACY_SCHEMA_CONSTRAINT + " ORDER BY table_name"
        assert bi(rows(conn, q)) == [("bi_metrics",), ("bi_recent",)]

    check("grafana legacy buildTableQuery", g_legacy_tables)

    def g_legacy_columns():
        # G_LEGACY buildColumnQuery(type) for every type the builder asks for.
        def cols(kind):
            return [c for (c,) in rows(conn, grafana_legacy_column_query("bi_metrics", kind, "ts"))]

        assert cols(None) == ["amount", "host", "id", "ts", "value"], cols(None)
        assert cols("time") == ["id", "ts", "value"], cols("time")
        assert cols("value") == ["amount", "id", "value"], cols("value")
        assert cols("metric") == ["host"], cols("metric")
        assert cols("group") == ["host"], cols("group")

    check("grafana legacy buildColumnQuery", g_legacy_columns)

    def g_legacy_datatype():
        # G_LEGACY buildDatatypeQuery(column)
        q = "SELECT udt_name FROM information_schema.columns WHERE "
        q += grafana_legacy_table_constraint("bi_metrics") + " AND column_name = 'value'"
        assert rows(conn, q) == [("float8",)]

    check("grafana legacy buildDatatypeQuery", g_legacy_datatype)

    def g_legacy_value_query():
        # G_LEGACY buildValueQuery(column), then $__timeFilter expanded by G_MACROS.
        q = "SELECT DISTINCT quote_literal(host)"
        q += " FROM bi_metrics"
        q += " WHERE " + grafana_time_filter("ts")
        q += " AND host IS NOT NULL"
        q += " ORDER BY 1 LIMIT 100"
        assert rows(conn, q) == [("'a'",), ("'b'",)], rows(conn, q)

    check("grafana legacy buildValueQuery + $__timeFilter", g_legacy_value_query)

    def g_time_series():
        # The builder's default time-series query, with $__timeGroupAlias(ts, '1h')
        # and $__timeFilter(ts) expanded as G_MACROS does (no TimescaleDB).
        q = f"""SELECT
  {grafana_time_group_alias("ts", 3600)},
  avg(value) AS "value"
FROM bi_metrics
WHERE
  {grafana_time_filter("ts")}
GROUP BY 1
ORDER BY 1"""
        cur = conn.execute(q, prepare=True)
        r = cur.fetchall()
        assert [d.name for d in cur.description] == ["time", "value"], cur.description
        assert r == [(1704067200, 2.0), (1704070800, 3.0)], r
        # extract() is numeric since PostgreSQL 14 and double precision here
        # (README, compatibility): the same values, which Grafana reads either way.
        assert cur.description[0].type_code in (1700, 701), ("time column type oid", cur.description[0].type_code)

    check("grafana $__timeGroupAlias/$__timeFilter time series", g_time_series)

    def g_other_macros():
        # G_MACROS $__time(ts), $__timeFrom(), $__timeTo()
        q = f"""SELECT ts AS "time", host FROM bi_metrics WHERE ts >= '{FROM}' AND ts < '{TO}' ORDER BY 1"""
        r = rows(conn, q)
        assert r == [
            (datetime(2024, 1, 1, 0, 10), "a"),
            (datetime(2024, 1, 1, 0, 50), "b"),
            (datetime(2024, 1, 1, 1, 20), "a"),
        ], r
        # G_MACROS $__timeEpoch(ts) with $__timeFilter(ts): extract() is numeric.
        q = f"""SELECT extract(epoch from ts) as "time", value FROM bi_metrics WHERE {grafana_time_filter("ts")} ORDER BY 1"""
        r = rows(conn, q)
        assert r == [(1704067800, 1.5), (1704070200, 2.5), (1704072000, 3.0)], r

    check("grafana $__time/$__timeEpoch/$__timeFrom/$__timeTo", g_other_macros)

    def g_schema_schemas():
        # G_SCHEMA querySchemas
        names = [n for (n,) in rows(
            conn,
            """SELECT schema_name FROM information_schema.schemata
		 WHERE schema_name NOT LIKE 'pg_%' AND schema_name != 'information_schema'
		 ORDER BY schema_name""",
        )]
        assert "public" in names and names == sorted(names), names
        assert not any(n.startswith("pg_") or n == "information_schema" for n in names), names

    check("grafana schema.go querySchemas", g_schema_schemas)

    def g_schema_tables():
        # G_SCHEMA queryTables: schema bound as $1.
        r = rows(
            conn,
            """SELECT table_name FROM information_schema.tables
		 WHERE table_schema = $1 AND table_type IN ('BASE TABLE', 'VIEW')
		 ORDER BY table_name""",
            ["public"],
        )
        assert bi(r) == [("bi_metrics",), ("bi_recent",)], r

    check("grafana schema.go queryTables ($1)", g_schema_tables)

    def g_schema_columns():
        # G_SCHEMA queryColumns: schema and table bound as $1, $2.
        r = rows(
            conn,
            """SELECT column_name, data_type, udt_name, numeric_precision, numeric_scale
		 FROM information_schema.columns
		 WHERE table_schema = $1 AND table_name = $2
		 ORDER BY ordinal_position""",
            ["public", "bi_metrics"],
        )
        assert r == [
            ("id", "bigint", "int8", 64, 0),
            ("ts", "timestamp without time zone", "timestamp", None, None),
            ("host", "character varying", "varchar", None, None),
            ("value", "double precision", "float8", 53, None),
            ("amount", "numeric", "numeric", 12, 2),
        ], r

    check("grafana schema.go queryColumns ($1, $2)", g_schema_columns)

    def g_schema_column_values():
        # G_SCHEMA ColumnValues: one UNION ALL branch per requested column.
        parts = []
        for i, col in enumerate(["host", "value"]):
            safe = f'"{col}"'
            parts.append(
                f"SELECT '{col}' AS col_name, {safe}::text AS val FROM (SELECT DISTINCT {safe} FROM "
                f'"public"."bi_metrics" WHERE {safe} IS NOT NULL ORDER BY {safe} LIMIT 100) sub_{i}'
            )
        r = rows(conn, " UNION ALL ".join(parts))
        by_col = {}
        for name, val in r:
            by_col.setdefault(name, []).append(val)
        assert by_col == {"host": ["a", "b", "c"], "value": ["1.5", "2.5", "3", "4", "5"]}, r

    check("grafana schema.go ColumnValues", g_schema_column_values)


# =============================================================================
# Metabase (metabase/metabase), PostgreSQL driver over pgjdbc
# =============================================================================
# Metabase builds its sync SQL with HoneySQL 2 (:dialect :ansi, so every
# identifier is double-quoted and function names upper-cased); values that are
# not [:inline ...] become `?`, which pgjdbc sends as $n server-side parameters.
# The texts marked "rendered as of v0.62" are what Metabase v0.62 puts on the
# wire (they match src/metabase/driver/postgres.clj, which in that version also
# selects database-default / is_generated / is_nullable and NULLIF(n_live_tup, 0));
# the ones marked "rendered by hand" are this script's rendering of the HoneySQL.
M_PG = "metabase/metabase src/metabase/driver/postgres.clj"
M_DESCRIBE_DB = "metabase/metabase src/metabase/driver/sql_jdbc/sync/describe_database.clj"

with connect() as conn:

    def m_session():
        # Connection set-up seen from Metabase + pgjdbc during sync.
        conn.execute("SET application_name = 'Metabase v0.62.1.5 [d4fe74c4-96c3-4812-b3ae-35e513752b13]'")
        assert rows(conn, "SELECT 1;") == [(1,)]
        assert rows(conn, "SHOW TRANSACTION ISOLATION LEVEL;") == [("read committed",)]
        assert rows(conn, "select current_catalog;") == [("streamhouse",)]
        conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ UNCOMMITTED;")
        conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED;")
        # M_PG driver/db-default-timezone
        tz = rows(conn, "show timezone;")
        assert len(tz) == 1 and tz[0][0], tz
        # M_PG sql-jdbc.execute/set-timezone-sql "SET SESSION TIMEZONE TO %s;" (report timezone)
        conn.execute("SET SESSION TIMEZONE TO 'UTC';")

    check("metabase session set-up", m_session)

    def m_privileges():
        # M_PG sql-jdbc.sync/current-user-table-privileges (used by
        # M_DESCRIBE_DB have-select-privilege-fn to decide which tables to sync).
        q = "\n".join([
            "with table_privileges as (",
            " select",
            "   NULL as role,",
            "   t.schemaname as schema,",
            "   t.objectname as table,",
            "   pg_catalog.has_any_column_privilege(current_user, '\"' || replace(t.schemaname, '\"', '\"\"') || '\"' || '.' || '\"' || replace(t.objectname, '\"', '\"\"') || '\"',  'update') as update,",
            "   pg_catalog.has_any_column_privilege(current_user, '\"' || replace(t.schemaname, '\"', '\"\"') || '\"' || '.' || '\"' || replace(t.objectname, '\"', '\"\"') || '\"',  'select') as select,",
            "   pg_catalog.has_any_column_privilege(current_user, '\"' || replace(t.schemaname, '\"', '\"\"') || '\"' || '.' || '\"' || replace(t.objectname, '\"', '\"\"') || '\"',  'insert') as insert,",
            "   pg_catalog.has_table_privilege(     current_user, '\"' || replace(t.schemaname, '\"', '\"\"') || '\"' || '.' || '\"' || replace(t.objectname, '\"', '\"\"') || '\"',  'delete') as delete",
            " from (",
            "   select schemaname, tablename as objectname from pg_catalog.pg_tables",
            "   union",
            "   select schemaname, viewname as objectname from pg_catalog.pg_views",
            "   union",
            "   select schemaname, matviewname as objectname from pg_catalog.pg_matviews",
            " ) t",
            " where t.schemaname !~ '^pg_'",
            "   and t.schemaname <> 'information_schema'",
            "   and pg_catalog.has_schema_privilege(current_user, t.schemaname, 'usage')",
            ")",
            "select t.*",
            "from table_privileges t",
        ])
        cur = conn.execute(q, prepare=True)
        assert [d.name for d in cur.description] == ["role", "schema", "table", "update", "select", "insert", "delete"], cur.description
        r = sorted(bi(cur.fetchall(), 2), key=lambda x: x[2])
        # The owner holds every privilege on its tables, views and matviews.
        assert r == [
            (None, "public", "bi_by_host", True, True, True, True),
            (None, "public", "bi_metrics", True, True, True, True),
            (None, "public", "bi_recent", True, True, True, True),
        ], r

    check("metabase current-user-table-privileges", m_privileges)

    def m_get_tables():
        # M_PG get-tables-sql (describe-database), rendered as of v0.62;
        # $1/$2 = 0 (NULLIF and objsubid), $3 = '^pg_', $4 = 'information_schema', $5 = 'public'.
        q = (
            'SELECT "n"."nspname" AS "schema", "c"."relname" AS "name", CASE "c"."relkind" WHEN \'r\' THEN \'TABLE\' '
            "WHEN 'p' THEN 'PARTITIONED TABLE' WHEN 'v' THEN 'VIEW' WHEN 'f' THEN 'FOREIGN TABLE' WHEN 'm' THEN "
            "'MATERIALIZED VIEW' ELSE NULL END AS \"type\", \"d\".\"description\" AS \"description\", "
            'NULLIF("stat"."n_live_tup", $1) AS "estimated_row_count" FROM "pg_catalog"."pg_class" AS "c" '
            'INNER JOIN "pg_catalog"."pg_namespace" AS "n" ON "c"."relnamespace" = "n"."oid" LEFT JOIN '
            '"pg_catalog"."pg_description" AS "d" ON ("c"."oid" = "d"."objoid") AND ("d"."objsubid" = $2) AND '
            '("d"."classoid" = \'pg_class\'::regclass) LEFT JOIN "pg_stat_user_tables" AS "stat" ON '
            '("n"."nspname" = "stat"."schemaname") AND ("c"."relname" = "stat"."relname") WHERE '
            '("c"."relnamespace" = "n"."oid") AND ("n"."nspname" !~ $3) AND ("n"."nspname" <> $4) AND '
            "c.relkind in ('r', 'p', 'v', 'f', 'm') AND (\"n\".\"nspname\" IN ($5)) "
            'ORDER BY "type" ASC, "schema" ASC, "name" ASC'
        )
        r = bi(rows(conn, q, [0, 0, "^pg_", "information_schema", "public"]), 1)
        assert [x[:4] for x in r] == [
            ("public", "bi_by_host", "MATERIALIZED VIEW", None),
            ("public", "bi_metrics", "TABLE", None),
            ("public", "bi_recent", "VIEW", None),
        ], r
        # n_live_tup comes from the statistics collector; views have none.
        assert r[2][4] is None and all(x[4] is None or isinstance(x[4], int) for x in r), r

    check("metabase describe-database get-tables-sql", m_get_tables)

    def m_enum_types():
        # M_PG enum-types (before describe-fields)
        q = ("SELECT nspname, typname "
             "FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
             "WHERE t.oid IN (SELECT DISTINCT enumtypid FROM pg_enum e)")
        assert rows(conn, q) == []

    check("metabase enum-types", m_enum_types)

    def m_describe_fields():
        # M_PG sql-jdbc.sync/describe-fields-sql, rendered as of v0.62:
        # $1 = 'ALWAYS', $2 = $3 = 'public'. The second UNION ALL branch
        # covers materialized views, which information_schema.columns omits.
        q = (
            'SELECT "c"."column_name" AS "name", CASE WHEN "c"."udt_schema" IN (\'public\', \'pg_catalog\') THEN '
            "FORMAT('%s', \"c\".\"udt_name\") ELSE FORMAT('\"%s\".\"%s\"', \"c\".\"udt_schema\", \"c\".\"udt_name\") END "
            'AS "database-type", "c"."ordinal_position" - 1 AS "database-position", "c"."table_schema" AS '
            '"table-schema", "c"."table_name" AS "table-name", "pk"."column_name" IS NOT NULL AS "pk?", '
            "COL_DESCRIPTION(CAST(CAST(FORMAT('%I.%I', CAST(\"c\".\"table_schema\" AS TEXT), CAST(\"c\".\"table_name\" AS "
            'TEXT)) AS REGCLASS) AS OID), "c"."ordinal_position") AS "field-comment", (("column_default" IS NULL) OR '
            "(LOWER(\"column_default\") = 'null')) AND (\"is_nullable\" = 'NO') AND NOT (((\"column_default\" IS NOT NULL) "
            "AND (\"column_default\" LIKE '%nextval(%')) OR (\"is_identity\" <> 'NO')) AS \"database-required\", "
            '"column_default" AS "database-default", (("column_default" IS NOT NULL) AND ("column_default" LIKE '
            "'%nextval(%')) OR (\"is_identity\" <> 'NO') AS \"database-is-auto-increment\", \"is_generated\" = $1 AS "
            '"database-is-generated", "is_nullable" = \'YES\' AS "database-is-nullable" FROM '
            '"information_schema"."columns" AS "c" LEFT JOIN (SELECT "tc"."table_schema", "tc"."table_name", '
            '"kc"."column_name" FROM "information_schema"."table_constraints" AS "tc" INNER JOIN '
            '"information_schema"."key_column_usage" AS "kc" ON ("tc"."constraint_name" = "kc"."constraint_name") '
            'AND ("tc"."table_schema" = "kc"."table_schema") AND ("tc"."table_name" = "kc"."table_name") WHERE '
            '"tc"."constraint_type" = \'PRIMARY KEY\') AS "pk" ON ("c"."table_schema" = "pk"."table_schema") AND '
            '("c"."table_name" = "pk"."table_name") AND ("c"."column_name" = "pk"."column_name") WHERE '
            "c.table_schema !~ '^information_schema|catalog_history|pg_' AND (\"c\".\"table_schema\" IN ($2)) "
            'UNION ALL SELECT "pa"."attname" AS "name", CASE WHEN "ptn"."nspname" IN (\'public\', \'pg_catalog\') THEN '
            "FORMAT('%s', \"pt\".\"typname\") ELSE FORMAT('\"%s\".\"%s\"', \"ptn\".\"nspname\", \"pt\".\"typname\") END AS "
            '"database-type", "pa"."attnum" - 1 AS "database-position", "pn"."nspname" AS "table-schema", '
            '"pc"."relname" AS "table-name", FALSE AS "pk?", NULL AS "field-comment", FALSE AS "database-required", '
            'NULL AS "database-default", FALSE AS "database-is-auto-increment", FALSE AS "database-is-generated", '
            'FALSE AS "database-is-nullable" FROM "pg_catalog"."pg_class" AS "pc" INNER JOIN '
            '"pg_catalog"."pg_namespace" AS "pn" ON "pn"."oid" = "pc"."relnamespace" INNER JOIN '
            '"pg_catalog"."pg_attribute" AS "pa" ON "pa"."attrelid" = "pc"."oid" INNER JOIN "pg_catalog"."pg_type" '
            'AS "pt" ON "pt"."oid" = "pa"."atttypid" INNER JOIN "pg_catalog"."pg_namespace" AS "ptn" ON '
            '"ptn"."oid" = "pt"."typnamespace" WHERE ("pc"."relkind" = \'m\') AND ("pa"."attnum" >= 1) AND '
            '("pn"."nspname" IN ($3)) ORDER BY "table-schema" ASC, "table-name" ASC, "database-position" ASC'
        )
        cur = conn.execute(q, ["ALWAYS", "public", "public"], prepare=True)
        assert [d.name for d in cur.description] == [
            "name", "database-type", "database-position", "table-schema", "table-name", "pk?", "field-comment",
            "database-required", "database-default", "database-is-auto-increment", "database-is-generated",
            "database-is-nullable",
        ], cur.description
        r = bi(cur.fetchall(), 4)

        def col(name, typ, pos, table, pk=False, required=False, nullable=True):
            return (name, typ, pos, "public", table, pk, None, required, None, False, False, nullable)

        assert r == [
            col("host", "varchar", 0, "bi_by_host", nullable=False),
            col("n", "int8", 1, "bi_by_host", nullable=False),
            col("total", "float8", 2, "bi_by_host", nullable=False),
            col("id", "int8", 0, "bi_metrics", pk=True, required=True, nullable=False),
            col("ts", "timestamp", 1, "bi_metrics"),
            col("host", "varchar", 2, "bi_metrics"),
            col("value", "float8", 3, "bi_metrics"),
            col("amount", "numeric", 4, "bi_metrics"),
            col("id", "int8", 0, "bi_recent"),
            col("ts", "timestamp", 1, "bi_recent"),
            col("host", "varchar", 2, "bi_recent"),
            col("value", "float8", 3, "bi_recent"),
        ], r

    check("metabase describe-fields-sql", m_describe_fields)

    def m_describe_fks():
        # M_PG sql-jdbc.sync/describe-fks-sql, rendered as of v0.62; $1 = 'public'.
        q = (
            'SELECT "fk_ns"."nspname" AS "fk-table-schema", "fk_table"."relname" AS "fk-table-name", '
            '"fk_column"."attname" AS "fk-column-name", "pk_ns"."nspname" AS "pk-table-schema", '
            '"pk_table"."relname" AS "pk-table-name", "pk_column"."attname" AS "pk-column-name" FROM '
            '"pg_constraint" AS "c" INNER JOIN "pg_class" AS "fk_table" ON "c"."conrelid" = "fk_table"."oid" '
            'INNER JOIN "pg_namespace" AS "fk_ns" ON "c"."connamespace" = "fk_ns"."oid" INNER JOIN '
            '"pg_attribute" AS "fk_column" ON "c"."conrelid" = "fk_column"."attrelid" INNER JOIN "pg_class" AS '
            '"pk_table" ON "c"."confrelid" = "pk_table"."oid" INNER JOIN "pg_namespace" AS "pk_ns" ON '
            '"pk_table"."relnamespace" = "pk_ns"."oid" INNER JOIN "pg_attribute" AS "pk_column" ON '
            '"c"."confrelid" = "pk_column"."attrelid" WHERE fk_ns.nspname !~ '
            "'^information_schema|catalog_history|pg_' AND (\"c\".\"contype\" = 'f'::char) AND "
            '("fk_column"."attnum" = ANY(c.conkey)) AND ("pk_column"."attnum" = ANY(c.confkey)) AND '
            '("fk_ns"."nspname" IN ($1)) ORDER BY "fk-table-schema" ASC, "fk-table-name" ASC'
        )
        # No foreign keys in this schema.
        assert bi(rows(conn, q, ["public"]), 1) == []

    check("metabase describe-fks-sql", m_describe_fks)

    def m_describe_indexes():
        # M_PG sql-jdbc.sync/describe-indexes-sql, rendered by hand
        # ([:. [:composite f] :n] is HoneySQL's (f)."n"); $1 = 'public', $2 = 1.
        # (Metabase turns :index-info off at the moment; the method is still there.)
        q = (
            'SELECT "tmp"."table-schema", "tmp"."table-name", TRIM(BOTH \'"\' FROM '
            'PG_CATALOG.PG_GET_INDEXDEF("tmp"."ci_oid", "tmp"."pos", FALSE)) AS "field-name" FROM (SELECT '
            '"n"."nspname" AS "table-schema", "ct"."relname" AS "table-name", "ci"."oid" AS "ci_oid", '
            '(INFORMATION_SCHEMA._PG_EXPANDARRAY("i"."indkey"))."n" AS "pos" FROM "pg_catalog"."pg_class" AS "ct" '
            'INNER JOIN "pg_catalog"."pg_namespace" AS "n" ON "ct"."relnamespace" = "n"."oid" INNER JOIN '
            '"pg_catalog"."pg_index" AS "i" ON "ct"."oid" = "i"."indrelid" INNER JOIN "pg_catalog"."pg_class" AS '
            '"ci" ON "ci"."oid" = "i"."indexrelid" WHERE (PG_CATALOG.PG_GET_EXPR("i"."indpred", "i"."indrelid") IS '
            "NULL) AND n.nspname !~ '^information_schema|catalog_history|pg_' AND (\"n\".\"nspname\" IN ($1))) AS "
            '"tmp" WHERE "tmp"."pos" = $2'
        )
        r = bi(rows(conn, q, ["public", 1]), 1)
        assert r == [("public", "bi_metrics", "id")], r

    check("metabase describe-indexes-sql", m_describe_indexes)

    def m_probe():
        # M_DESCRIBE_DB simple-select-probe-query (have-select-privilege? for
        # foreign tables, and for drivers without :table-privileges), rendered by hand.
        cur = conn.execute('SELECT TRUE AS "_" FROM "public"."bi_metrics" WHERE 1 <> 1 LIMIT 0', prepare=True)
        assert cur.fetchall() == [] and [d.name for d in cur.description] == ["_"]

    check("metabase simple-select-probe-query", m_probe)

    def m_fingerprint():
        # Sync's fingerprint queries (as seen from v0.62: text columns through SUBSTRING).
        r = rows(
            conn,
            '-- Metabase\nSELECT SUBSTRING("public"."bi_metrics"."host", 1, 1234) AS "substring4476" '
            'FROM "public"."bi_metrics" LIMIT 10000',
        )
        assert sorted(r) == [("a",), ("a",), ("b",), ("b",), ("c",)], r
        r = rows(
            conn,
            '-- Metabase\nSELECT "public"."bi_metrics"."id" AS "id", "public"."bi_metrics"."ts" AS "ts", '
            '"public"."bi_metrics"."value" AS "value", "public"."bi_metrics"."amount" AS "amount" '
            'FROM "public"."bi_metrics" LIMIT 10000',
        )
        assert sorted(r)[0] == (1, datetime(2024, 1, 1, 0, 10), 1.5, Decimal("10.25")), r

    check("metabase fingerprint queries", m_fingerprint)

    def m_field_values():
        # Field values for a category column (MBQL breakout + limit), rendered by hand.
        r = rows(
            conn,
            'SELECT "public"."bi_metrics"."host" AS "host" FROM "public"."bi_metrics" GROUP BY '
            '"public"."bi_metrics"."host" ORDER BY "public"."bi_metrics"."host" ASC LIMIT 1000',
        )
        assert r == [("a",), ("b",), ("c",)], r

    check("metabase field values", m_field_values)

    def m_hour_bucket():
        # M_PG sql.qp/date :hour -> date-trunc, with the query's remark line; rendered by hand.
        r = rows(
            conn,
            "-- Metabase:: userID: 1 queryType: MBQL queryHash: 0000000000000000\n"
            "SELECT DATE_TRUNC('hour', \"public\".\"bi_metrics\".\"ts\") AS \"ts\", COUNT(*) AS \"count\" "
            "FROM \"public\".\"bi_metrics\" GROUP BY DATE_TRUNC('hour', \"public\".\"bi_metrics\".\"ts\") "
            "ORDER BY DATE_TRUNC('hour', \"public\".\"bi_metrics\".\"ts\") ASC",
        )
        assert r == [
            (datetime(2023, 12, 31, 23), 1),
            (datetime(2024, 1, 1, 0), 2),
            (datetime(2024, 1, 1, 1), 1),
            (datetime(2024, 1, 2, 12), 1),
        ], r

    check("metabase hour bucket (DATE_TRUNC)", m_hour_bucket)

    def m_week_bucket():
        # M_PG sql.qp/date :week with adjust-start-of-week (Sunday start on a
        # Monday-week database): date_trunc of ts + 1 day, minus 1 day; rendered by hand.
        w = "(DATE_TRUNC('week', (\"public\".\"bi_metrics\".\"ts\" + INTERVAL '1 day')) + INTERVAL '-1 day')"
        r = rows(
            conn,
            f'SELECT {w} AS "ts", SUM("public"."bi_metrics"."amount") AS "sum" FROM "public"."bi_metrics" '
            f"GROUP BY {w} ORDER BY {w} ASC",
        )
        assert r == [(datetime(2023, 12, 31), Decimal("61.75"))], r

    check("metabase week bucket (start of week)", m_week_bucket)

    def m_day_bucket_params():
        # M_PG sql.qp/date :day (CAST AS date) with an absolute date filter whose
        # bounds pgjdbc binds as timestamp parameters; rendered by hand.
        d = 'CAST("public"."bi_metrics"."ts" AS date)'
        r = rows(
            conn,
            f'SELECT {d} AS "ts", AVG("public"."bi_metrics"."value") AS "avg" FROM "public"."bi_metrics" '
            f'WHERE ("public"."bi_metrics"."ts" >= $1) AND ("public"."bi_metrics"."ts" < $2) '
            f"GROUP BY {d} ORDER BY {d} ASC",
            [datetime(2024, 1, 1), datetime(2024, 1, 3)],
        )
        assert [x[0] for x in r] == [date(2024, 1, 1), date(2024, 1, 2)], r
        assert abs(r[0][1] - 7.0 / 3) < 1e-9 and r[1][1] == 4.0, r

    check("metabase day bucket with bound timestamps", m_day_bucket_params)

    def m_hour_of_day():
        # M_PG sql.qp/date :hour-of-day (extract-integer), rendered by hand.
        h = 'CAST(extract(hour from "public"."bi_metrics"."ts") AS integer)'
        r = rows(
            conn,
            f'SELECT {h} AS "ts", COUNT(*) AS "count" FROM "public"."bi_metrics" GROUP BY {h} ORDER BY {h} ASC',
        )
        assert r == [(0, 2), (1, 1), (12, 1), (23, 1)], r

    check("metabase hour-of-day (extract)", m_hour_of_day)

    def m_relative_filter():
        # "Previous 30 days": M_PG add-interval-honeysql-form + date-trunc over NOW(); rendered by hand.
        r = rows(
            conn,
            'SELECT COUNT(*) AS "count" FROM "public"."bi_metrics" WHERE ("public"."bi_metrics"."ts" >= '
            "DATE_TRUNC('day', NOW() + INTERVAL '-30 day')) AND (\"public\".\"bi_metrics\".\"ts\" < "
            "DATE_TRUNC('day', NOW()))",
        )
        assert r == [(0,)], r

    check("metabase relative date filter", m_relative_filter)


# =============================================================================
# Superset (apache/superset), PostgreSQL through psycopg2 / SQLAlchemy
# =============================================================================
S_PG = "apache/superset superset/db_engine_specs/postgres.py"
S_BASE = "apache/superset superset/db_engine_specs/base.py"
S_UTILS = "apache/superset superset/databases/utils.py"

# S_PG PostgresBaseEngineSpec._time_grain_expressions
TIME_GRAINS = {
    "PT1S": "DATE_TRUNC('second', {col})",
    "PT5S": "DATE_TRUNC('minute', {col}) + INTERVAL '5 seconds' * FLOOR(EXTRACT(SECOND FROM {col}) / 5)",
    "PT30S": "DATE_TRUNC('minute', {col}) + INTERVAL '30 seconds' * FLOOR(EXTRACT(SECOND FROM {col}) / 30)",
    "PT1M": "DATE_TRUNC('minute', {col})",
    "PT5M": "DATE_TRUNC('hour', {col}) + INTERVAL '5 minutes' * FLOOR(EXTRACT(MINUTE FROM {col}) / 5)",
    "PT10M": "DATE_TRUNC('hour', {col}) + INTERVAL '10 minutes' * FLOOR(EXTRACT(MINUTE FROM {col}) / 10)",
    "PT15M": "DATE_TRUNC('hour', {col}) + INTERVAL '15 minutes' * FLOOR(EXTRACT(MINUTE FROM {col}) / 15)",
    "PT30M": "DATE_TRUNC('hour', {col}) + INTERVAL '30 minutes' * FLOOR(EXTRACT(MINUTE FROM {col}) / 30)",
    "PT1H": "DATE_TRUNC('hour', {col})",
    "P1D": "DATE_TRUNC('day', {col})",
    "P1W": "DATE_TRUNC('week', {col})",
    "P1M": "DATE_TRUNC('month', {col})",
    "P3M": "DATE_TRUNC('quarter', {col})",
    "P1Y": "DATE_TRUNC('year', {col})",
}
# What each grain gives for ts = 2023-12-31 23:59:59 (id 5) in PostgreSQL.
GRAIN_OF_ID5 = {
    "PT1S": datetime(2023, 12, 31, 23, 59, 59),
    "PT5S": datetime(2023, 12, 31, 23, 59, 55),
    "PT30S": datetime(2023, 12, 31, 23, 59, 30),
    "PT1M": datetime(2023, 12, 31, 23, 59),
    "PT5M": datetime(2023, 12, 31, 23, 55),
    "PT10M": datetime(2023, 12, 31, 23, 50),
    "PT15M": datetime(2023, 12, 31, 23, 45),
    "PT30M": datetime(2023, 12, 31, 23, 30),
    "PT1H": datetime(2023, 12, 31, 23),
    "P1D": datetime(2023, 12, 31),
    "P1W": datetime(2023, 12, 25),
    "P1M": datetime(2023, 12, 1),
    "P3M": datetime(2023, 10, 1),
    "P1Y": datetime(2023, 1, 1),
}


def superset_convert_dttm(target_type, dttm):
    # S_PG PostgresBaseEngineSpec.convert_dttm
    if target_type == "Date":
        return f"TO_DATE('{dttm.date().isoformat()}', 'YYYY-MM-DD')"
    dttm_formatted = dttm.isoformat(sep=" ", timespec="microseconds")
    return f"""TO_TIMESTAMP('{dttm_formatted}', 'YYYY-MM-DD HH24:MI:SS.US')"""


EXTENDED = False
with connect() as conn:
    # Not a Superset query: pins the session zone that TO_TIMESTAMP (timestamptz)
    # comparisons below depend on, as a UTC-configured PostgreSQL would have it.
    conn.execute("SET TIME ZONE 'UTC'")

    def s_catalogs():
        # S_PG PostgresEngineSpec.get_catalog_names
        names = {n for (n,) in rows(conn, """
SELECT datname FROM pg_database
WHERE datistemplate = false;
            """)}
        assert "streamhouse" in names, names

    check("superset get_catalog_names", s_catalogs)

    def s_prequery():
        # S_PG get_prequeries: runs before every SQL Lab query with a schema.
        conn.execute('set search_path = "public"')
        assert rows(conn, "SELECT count(*) FROM bi_metrics") == [(5,)]

    check("superset get_prequeries search_path", s_prequery)

    def s_time_grains():
        # S_PG time grain expressions, in the GROUP BY Superset builds for a chart.
        for grain, expr in TIME_GRAINS.items():
            e = expr.format(col="ts")
            r = rows(conn, f"SELECT {e} AS ts, COUNT(*) AS count FROM public.bi_metrics WHERE id = 5 GROUP BY {e}")
            assert r == [(GRAIN_OF_ID5[grain], 1)], (grain, e, r)

    check("superset time grain expressions", s_time_grains)

    def s_time_grains_minutes():
        # The sub-hour grains on minutes that are not multiples of the step.
        e = TIME_GRAINS["PT15M"].format(col="ts")
        r = rows(conn, f"SELECT id, {e} FROM public.bi_metrics WHERE id <= 3 ORDER BY id")
        assert r == [
            (1, datetime(2024, 1, 1, 0, 0)),
            (2, datetime(2024, 1, 1, 0, 45)),
            (3, datetime(2024, 1, 1, 1, 15)),
        ], r

    check("superset PT15M grain", s_time_grains_minutes)

    def s_chart_query():
        # A chart's query: grain + time range through convert_dttm (S_PG),
        # put together by SQLAlchemy in superset/models/helpers.py get_sqla_query; rendered by hand.
        since = superset_convert_dttm("DateTime", datetime(2024, 1, 1))
        until = superset_convert_dttm("DateTime", datetime(2024, 1, 2))
        q = (
            "SELECT DATE_TRUNC('hour', ts) AS ts, AVG(value) AS \"AVG(value)\" \n"
            "FROM public.bi_metrics \n"
            f"WHERE ts >= {since} AND ts < {until} GROUP BY DATE_TRUNC('hour', ts) "
            "ORDER BY \"AVG(value)\" DESC \n LIMIT 10000"
        )
        assert since == "TO_TIMESTAMP('2024-01-01 00:00:00.000000', 'YYYY-MM-DD HH24:MI:SS.US')", since
        r = rows(conn, q)
        assert r == [(datetime(2024, 1, 1, 1), 3.0), (datetime(2024, 1, 1, 0), 2.0)], r

    check("superset chart query with TO_TIMESTAMP range", s_chart_query)

    def s_convert_dttm():
        # S_PG convert_dttm, both forms, as values.
        r = rows(
            conn,
            "SELECT " + superset_convert_dttm("DateTime", datetime(2024, 1, 2, 3, 4, 5, 678900)) + ", "
            + superset_convert_dttm("Date", datetime(2024, 1, 2)),
        )
        assert r == [(datetime(2024, 1, 2, 3, 4, 5, 678900, tzinfo=timezone.utc), date(2024, 1, 2))], r

    check("superset convert_dttm TO_TIMESTAMP/TO_DATE", s_convert_dttm)

    def s_epoch_to_dttm():
        # S_PG epoch_to_dttm for an epoch-seconds column.
        e = "(timestamp 'epoch' + {col} * interval '1 second')".format(col="id")
        assert rows(conn, f"SELECT {e} FROM public.bi_metrics WHERE id = 2") == [(datetime(1970, 1, 1, 0, 0, 2),)]

    check("superset epoch_to_dttm", s_epoch_to_dttm)

    def s_cancel():
        # S_PG get_cancel_query_id: pg_backend_pid() on the query's connection.
        with psycopg.connect(DSN, autocommit=True) as victim:
            pid = victim.execute("SELECT pg_backend_pid()").fetchone()[0]
            # The backend's pid is the one BackendKeyData announced (and so unique).
            assert pid == victim.info.backend_pid, (pid, victim.info.backend_pid)

    check("superset get_cancel_query_id (pg_backend_pid)", s_cancel)

engine = sa.create_engine(f"postgresql+psycopg2://grafana@127.0.0.1:{port}/streamhouse")


# S_UTILS get_table_metadata and S_PG get_table_names: the inspector calls
# Superset makes (SQLAlchemy 2's PostgreSQL dialect writes the SQL).
insp = sa.inspect(engine)


def s_inspector_names():
    assert "public" in insp.get_schema_names()
    # S_PG get_table_names: tables plus foreign tables.
    foreign = insp.get_foreign_table_names("public")
    assert foreign == [], foreign
    tables = set(insp.get_table_names("public")) | set(foreign)
    assert "bi_metrics" in tables and "bi_recent" not in tables and "bi_by_host" not in tables, tables
    views = insp.get_view_names("public")
    assert "bi_recent" in views and "bi_by_host" not in views, views
    assert "bi_by_host" in insp.get_materialized_view_names("public")


check("superset inspector table/view/foreign-table names", s_inspector_names)


def s_inspector_table():
    cols = [(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns("bi_metrics", "public")]
    assert cols == [
        ("id", "BIGINT", False),
        ("ts", "TIMESTAMP", True),
        ("host", "VARCHAR(32)", True),
        ("value", "DOUBLE PRECISION", True),
        ("amount", "NUMERIC(12, 2)", True),
    ], cols
    pk = insp.get_pk_constraint("bi_metrics", "public")
    assert pk["constrained_columns"] == ["id"] and pk["name"] == "bi_metrics_pkey", pk
    assert insp.get_foreign_keys("bi_metrics", "public") == []
    assert insp.get_indexes("bi_metrics", "public") == []
    assert insp.get_table_comment("bi_metrics", "public") == {"text": None}


check("superset inspector table metadata", s_inspector_table)


def s_inspector_view_columns():
    # A view's and a materialized view's columns keep their declared types,
    # and PostgreSQL never marks them NOT NULL (attnotnull is false).
    vcols = [(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns("bi_recent", "public")]
    assert vcols == [
        ("id", "BIGINT", True),
        ("ts", "TIMESTAMP", True),
        ("host", "VARCHAR(32)", True),
        ("value", "DOUBLE PRECISION", True),
    ], vcols
    mcols = [(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns("bi_by_host", "public")]
    assert mcols == [
        ("host", "VARCHAR(32)", True),
        ("n", "BIGINT", True),
        ("total", "DOUBLE PRECISION", True),
    ], mcols


check("superset inspector view/matview columns", s_inspector_view_columns)


def s_select_star():
    # S_BASE select_star: select(literal_column("*")).select_from(text(quoted table))
    # .limit(100), compiled with literal binds as Database.compile_sqla_query does.
    qry = sa.select(sa.literal_column("*")).select_from(sa.text("public.bi_metrics")).limit(100)
    sql = str(qry.compile(engine, compile_kwargs={"literal_binds": True}))
    assert sql == "SELECT * \nFROM public.bi_metrics \n LIMIT 100", sql
    with engine.connect() as c:
        r = c.exec_driver_sql(sql).fetchall()
    assert len(r) == 5, r


check("superset select_star", s_select_star)
engine.dispose()

if failures:
    sys.exit("bi catalog queries FAILED:\n" + "\n".join(failures))
print("bi catalog queries ok")
