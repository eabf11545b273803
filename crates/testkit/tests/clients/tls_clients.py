"""TLS with real drivers: psycopg with sslmode=verify-full and a SCRAM
password, and ADBC Flight SQL over grpc+tls:// with a login.

    python3 tls_clients.py PG_PORT FLIGHT_PORT CA_PEM PASSWORD
"""

import sys

import adbc_driver_flightsql.dbapi as flight_sql
import psycopg
from adbc_driver_flightsql import DatabaseOptions

pg_port, flight_port, ca, password = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]

dsn = f"host=localhost port={pg_port} dbname=streamhouse user=streamhouse sslmode=verify-full sslrootcert={ca}"
with psycopg.connect(dsn + f" password={password}", autocommit=True) as conn:
    assert conn.info.pgconn.ssl_in_use, "psycopg is not using TLS"
    assert conn.execute("SELECT 40 + 2").fetchone() == (42,)
try:
    psycopg.connect(dsn + " password=wrong")
    raise AssertionError("a wrong password logged in")
except psycopg.OperationalError as e:
    assert "password authentication failed" in str(e), e

root = open(ca).read()
options = {DatabaseOptions.TLS_ROOT_CERTS.value: root, "username": "streamhouse", "password": password}
with flight_sql.connect(f"grpc+tls://localhost:{flight_port}", db_kwargs=options) as conn:
    with conn.cursor() as cur:
        cur.execute("SELECT 41 + 1 AS answer")
        assert cur.fetchall() == [(42,)]
bad = dict(options, password="wrong")
try:
    with flight_sql.connect(f"grpc+tls://localhost:{flight_port}", db_kwargs=bad) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
    raise AssertionError("a wrong Flight password logged in")
except Exception as e:  # the driver's error type varies between versions
    assert "UNAUTHENTICATED" in str(e) or "Unauthenticated" in str(e), e
print("tls clients done")
