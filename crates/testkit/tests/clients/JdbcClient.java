// pgjdbc against a running streamhouse, exercising what GUI/BI tools (DBeaver,
// Metabase) do on connect: DDL, batched prepared inserts, DatabaseMetaData
// introspection and typed reads with ResultSetMetaData. Usage (single-file
// source launch, no javac step):
//     java -cp /usr/share/java/postgresql.jar crates/testkit/tests/clients/JdbcClient.java PG_PORT
// Every check prints `ok <what>` or `FAIL <what>: <detail>` and the run goes
// on; exits 1 if any check failed, otherwise prints `jdbc client done`.

import java.math.BigDecimal;
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Statement;
import java.sql.Timestamp;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Set;
import org.postgresql.PGResultSetMetaData;

public class JdbcClient {
    interface Body {
        void run() throws Exception;
    }

    static int failures = 0;

    static void check(String what, Body body) {
        try {
            body.run();
            System.out.println("ok " + what);
        } catch (SQLException e) {
            failures++;
            System.out.println("FAIL " + what + ": SQLException [SQLState " + e.getSQLState() + "] " + e.getMessage());
        } catch (Throwable e) {
            failures++;
            System.out.println("FAIL " + what + ": " + e.getClass().getSimpleName() + ": " + e.getMessage());
        }
        System.out.flush();
    }

    static void expect(boolean cond, String detail) {
        if (!cond) throw new AssertionError(detail);
    }

    static void expectEq(Object expected, Object actual, String what) {
        if (!Objects.equals(expected, actual)) {
            throw new AssertionError(what + ": expected <" + expected + "> got <" + actual + ">");
        }
    }

    static void exec(Connection c, String sql) throws SQLException {
        try (Statement st = c.createStatement()) {
            st.execute(sql);
        }
    }

    static final Timestamp T1 = Timestamp.valueOf("2024-01-02 03:04:05.123456");
    static final Timestamp T2 = Timestamp.valueOf("2024-02-03 10:00:00");
    static final Timestamp T3 = Timestamp.valueOf("2024-03-04 23:59:59.5");

    public static void main(String[] args) throws Exception {
        String port = args.length > 0 ? args[0] : "5432";
        String url = "jdbc:postgresql://127.0.0.1:" + port + "/streamhouse?user=jdbc";
        Connection c;
        try {
            c = DriverManager.getConnection(url);
        } catch (SQLException e) {
            System.out.println("FAIL connect: SQLException [SQLState " + e.getSQLState() + "] " + e.getMessage());
            System.exit(1);
            return;
        }
        System.out.println("ok connect");
        c.setAutoCommit(true);

        // --- DDL ----------------------------------------------------------
        check("drop schema if exists cascade", () -> exec(c, "DROP SCHEMA IF EXISTS jdbc_s CASCADE"));
        check("create schema", () -> exec(c, "CREATE SCHEMA jdbc_s"));
        check("create table", () -> exec(c,
                "CREATE TABLE jdbc_s.orders (id BIGINT PRIMARY KEY, amount NUMERIC(12,2), note VARCHAR(40), placed TIMESTAMP)"));

        check("batch insert", () -> {
            try (PreparedStatement ps = c.prepareStatement(
                    "INSERT INTO jdbc_s.orders (id, amount, note, placed) VALUES (?, ?, ?, ?)")) {
                Object[][] rows = {
                    {1L, new BigDecimal("5.50"), "small", T1},
                    {2L, new BigDecimal("12.25"), "medium", T2},
                    {3L, new BigDecimal("100.00"), null, T3},
                };
                for (Object[] r : rows) {
                    ps.setLong(1, (Long) r[0]);
                    ps.setBigDecimal(2, (BigDecimal) r[1]);
                    if (r[2] == null) ps.setNull(3, java.sql.Types.VARCHAR);
                    else ps.setString(3, (String) r[2]);
                    ps.setTimestamp(4, (Timestamp) r[3]);
                    ps.addBatch();
                }
                int[] counts = ps.executeBatch();
                expectEq(3, counts.length, "update count array length");
                for (int i = 0; i < counts.length; i++) {
                    expectEq(1, counts[i], "update count[" + i + "]");
                }
            }
        });

        check("create view", () -> exec(c,
                "CREATE VIEW jdbc_s.big_orders AS SELECT id, amount FROM jdbc_s.orders WHERE amount > 10"));
        check("create materialized view", () -> exec(c,
                "CREATE MATERIALIZED VIEW jdbc_s.order_totals AS SELECT count(*) AS n, sum(amount) AS total FROM jdbc_s.orders"));

        check("select view", () -> {
            try (Statement st = c.createStatement();
                 ResultSet rs = st.executeQuery("SELECT id FROM jdbc_s.big_orders ORDER BY id")) {
                List<Long> ids = new ArrayList<>();
                while (rs.next()) ids.add(rs.getLong(1));
                expectEq(List.of(2L, 3L), ids, "big_orders ids");
            }
        });
        check("select materialized view", () -> {
            try (Statement st = c.createStatement();
                 ResultSet rs = st.executeQuery("SELECT n, total FROM jdbc_s.order_totals")) {
                expect(rs.next(), "no row");
                expectEq(3L, rs.getLong(1), "n");
                BigDecimal total = rs.getBigDecimal(2);
                expect(total != null && total.compareTo(new BigDecimal("117.75")) == 0, "total: got " + total);
            }
        });

        // --- DatabaseMetaData ---------------------------------------------
        DatabaseMetaData md = c.getMetaData();
        check("metadata product", () -> {
            String name = md.getDatabaseProductName();
            String ver = md.getDatabaseProductVersion();
            expect(name != null && !name.isEmpty(), "product name empty");
            expect(ver != null && !ver.isEmpty(), "product version empty");
        });

        check("getCatalogs", () -> {
            try (ResultSet rs = md.getCatalogs()) {
                Set<String> cats = new HashSet<>();
                while (rs.next()) cats.add(rs.getString("TABLE_CAT"));
                expect(cats.contains("streamhouse"), "catalogs " + cats);
            }
        });

        check("getSchemas contains jdbc_s", () -> {
            try (ResultSet rs = md.getSchemas()) {
                Set<String> schemas = new HashSet<>();
                while (rs.next()) schemas.add(rs.getString("TABLE_SCHEM"));
                expect(schemas.contains("jdbc_s"), "schemas " + schemas);
            }
        });

        check("getTableTypes", () -> {
            try (ResultSet rs = md.getTableTypes()) {
                Set<String> types = new HashSet<>();
                while (rs.next()) types.add(rs.getString(1));
                expect(types.contains("TABLE") && types.contains("VIEW"), "types " + types);
            }
        });

        check("getTables jdbc_s", () -> {
            try (ResultSet rs = md.getTables(null, "jdbc_s", "%", null)) {
                Map<String, String> got = new HashMap<>();
                while (rs.next()) {
                    expectEq("jdbc_s", rs.getString("TABLE_SCHEM"), "TABLE_SCHEM");
                    got.put(rs.getString("TABLE_NAME"), rs.getString("TABLE_TYPE"));
                }
                Map<String, String> want = new HashMap<>();
                want.put("orders", "TABLE");
                want.put("big_orders", "VIEW");
                want.put("order_totals", "MATERIALIZED VIEW");
                // the primary key index shows up as an INDEX row; ignore those
                got.values().removeIf(t -> t != null && t.contains("INDEX"));
                expectEq(want, got, "tables");
            }
        });

        check("getTables types filter", () -> {
            try (ResultSet rs = md.getTables(null, "jdbc_s", "%", new String[] {"TABLE", "VIEW"})) {
                Set<String> got = new HashSet<>();
                while (rs.next()) got.add(rs.getString("TABLE_NAME"));
                expectEq(Set.of("orders", "big_orders"), got, "tables");
            }
        });

        check("getColumns orders", () -> {
            try (ResultSet rs = md.getColumns(null, "jdbc_s", "orders", "%")) {
                List<String> names = new ArrayList<>();
                Map<String, String> typeNames = new HashMap<>();
                Map<String, Integer> sizes = new HashMap<>();
                Map<String, Integer> digits = new HashMap<>();
                Map<String, Integer> nullable = new HashMap<>();
                Map<String, String> isNullable = new HashMap<>();
                while (rs.next()) {
                    String n = rs.getString("COLUMN_NAME");
                    names.add(n);
                    typeNames.put(n, rs.getString("TYPE_NAME"));
                    sizes.put(n, rs.getInt("COLUMN_SIZE"));
                    digits.put(n, rs.getInt("DECIMAL_DIGITS"));
                    nullable.put(n, rs.getInt("NULLABLE"));
                    isNullable.put(n, rs.getString("IS_NULLABLE"));
                    rs.getInt("DATA_TYPE");
                    rs.getInt("ORDINAL_POSITION");
                    rs.getString("COLUMN_DEF");
                    rs.getString("IS_AUTOINCREMENT");
                }
                expectEq(List.of("id", "amount", "note", "placed"), names, "column order");
                expectEq("int8", typeNames.get("id"), "id TYPE_NAME");
                expectEq("numeric", typeNames.get("amount"), "amount TYPE_NAME");
                expectEq("varchar", typeNames.get("note"), "note TYPE_NAME");
                expectEq("timestamp", typeNames.get("placed"), "placed TYPE_NAME");
                expectEq(12, sizes.get("amount"), "amount COLUMN_SIZE");
                expectEq(2, digits.get("amount"), "amount DECIMAL_DIGITS");
                expectEq(40, sizes.get("note"), "note COLUMN_SIZE");
                expectEq(DatabaseMetaData.columnNoNulls, nullable.get("id"), "id NULLABLE");
                expectEq("NO", isNullable.get("id"), "id IS_NULLABLE");
                expectEq(DatabaseMetaData.columnNullable, nullable.get("note"), "note NULLABLE");
                expectEq("YES", isNullable.get("note"), "note IS_NULLABLE");
            }
        });

        check("getColumns view", () -> {
            try (ResultSet rs = md.getColumns(null, "jdbc_s", "big_orders", "%")) {
                List<String> names = new ArrayList<>();
                while (rs.next()) names.add(rs.getString("COLUMN_NAME"));
                expectEq(List.of("id", "amount"), names, "view columns");
            }
        });

        check("getPrimaryKeys", () -> {
            try (ResultSet rs = md.getPrimaryKeys(null, "jdbc_s", "orders")) {
                expect(rs.next(), "no primary key rows");
                expectEq("id", rs.getString("COLUMN_NAME"), "COLUMN_NAME");
                expectEq(1, rs.getInt("KEY_SEQ"), "KEY_SEQ");
                expectEq("orders_pkey", rs.getString("PK_NAME"), "PK_NAME");
                expect(!rs.next(), "more than one primary key column");
            }
        });

        check("getIndexInfo", () -> {
            try (ResultSet rs = md.getIndexInfo(null, "jdbc_s", "orders", false, true)) {
                boolean found = false;
                List<String> seen = new ArrayList<>();
                while (rs.next()) {
                    String idx = rs.getString("INDEX_NAME");
                    String col = rs.getString("COLUMN_NAME");
                    seen.add(idx + "(" + col + ",nonUnique=" + rs.getBoolean("NON_UNIQUE") + ")");
                    if ("orders_pkey".equals(idx) && "id".equals(col) && !rs.getBoolean("NON_UNIQUE")) found = true;
                }
                expect(found, "orders_pkey(id) unique index not found in " + seen);
            }
        });

        check("getImportedKeys", () -> {
            try (ResultSet rs = md.getImportedKeys(null, "jdbc_s", "orders")) {
                while (rs.next()) { }
            }
        });

        check("getTypeInfo", () -> {
            try (ResultSet rs = md.getTypeInfo()) {
                Set<String> types = new HashSet<>();
                while (rs.next()) types.add(rs.getString("TYPE_NAME"));
                expect(!types.isEmpty(), "empty");
                expect(types.contains("int4"), "no int4 in " + types.size() + " types");
                expect(types.contains("varchar"), "no varchar in " + types.size() + " types");
            }
        });

        check("getProcedures", () -> {
            try (ResultSet rs = md.getProcedures(null, "jdbc_s", "%")) {
                while (rs.next()) { }
            }
        });

        check("getFunctions", () -> {
            try (ResultSet rs = md.getFunctions(null, "jdbc_s", "%")) {
                while (rs.next()) { }
            }
        });

        // --- prepared select with typed reads -----------------------------
        check("prepared select by id", () -> {
            try (PreparedStatement ps = c.prepareStatement(
                    "SELECT id, amount, note, placed FROM jdbc_s.orders WHERE id = ?")) {
                ps.setLong(1, 1L);
                try (ResultSet rs = ps.executeQuery()) {
                    expect(rs.next(), "no row");
                    expectEq(1L, rs.getLong("id"), "id");
                    expectEq(new BigDecimal("5.50"), rs.getBigDecimal("amount"), "amount");
                    expectEq("small", rs.getString("note"), "note");
                    expectEq(T1, rs.getTimestamp("placed"), "placed");
                    expect(!rs.next(), "more than one row");
                }
                // same statement again: pgjdbc switches to a named server-side statement
                // after prepareThreshold (5) executions; run it past that
                for (long id = 1; id <= 6; id++) {
                    ps.setLong(1, (id % 3) + 1);
                    try (ResultSet rs = ps.executeQuery()) {
                        expect(rs.next(), "no row on execution " + id);
                        expectEq((id % 3) + 1, rs.getLong(1), "id on execution " + id);
                    }
                }
            }
        });

        check("prepared select null column", () -> {
            try (PreparedStatement ps = c.prepareStatement("SELECT note FROM jdbc_s.orders WHERE id = ?")) {
                ps.setLong(1, 3L);
                try (ResultSet rs = ps.executeQuery()) {
                    expect(rs.next(), "no row");
                    expect(rs.getString(1) == null, "note not null");
                    expect(rs.wasNull(), "wasNull false");
                }
            }
        });

        check("ResultSetMetaData types/precision/scale", () -> {
            try (PreparedStatement ps = c.prepareStatement(
                    "SELECT id, amount, note, placed FROM jdbc_s.orders WHERE id = ?")) {
                ps.setLong(1, 2L);
                try (ResultSet rs = ps.executeQuery()) {
                    ResultSetMetaData rmd = rs.getMetaData();
                    expectEq(4, rmd.getColumnCount(), "column count");
                    expectEq("id", rmd.getColumnName(1), "col 1 name");
                    expectEq("int8", rmd.getColumnTypeName(1), "id type name");
                    expectEq("numeric", rmd.getColumnTypeName(2), "amount type name");
                    expectEq("varchar", rmd.getColumnTypeName(3), "note type name");
                    expectEq("timestamp", rmd.getColumnTypeName(4), "placed type name");
                    expectEq(12, rmd.getPrecision(2), "amount precision");
                    expectEq(2, rmd.getScale(2), "amount scale");
                    expectEq(40, rmd.getPrecision(3), "note precision");
                    expectEq(java.sql.Types.NUMERIC, rmd.getColumnType(2), "amount java.sql.Types");
                }
            }
        });

        // Needs the table OID and attribute number in RowDescription: pgjdbc then
        // looks the column up in pg_attribute (DBeaver uses this to make result
        // grids editable). getSchemaName() is always "" in pgjdbc, so ask for the
        // base schema through PGResultSetMetaData.
        check("ResultSetMetaData base table/schema/nullability", () -> {
            try (PreparedStatement ps = c.prepareStatement(
                    "SELECT id, amount, note, placed FROM jdbc_s.orders WHERE id = ?")) {
                ps.setLong(1, 2L);
                try (ResultSet rs = ps.executeQuery()) {
                    ResultSetMetaData rmd = rs.getMetaData();
                    PGResultSetMetaData pg = rmd.unwrap(PGResultSetMetaData.class);
                    expectEq("orders", rmd.getTableName(1), "id table name");
                    expectEq("jdbc_s", pg.getBaseSchemaName(1), "id base schema name");
                    expectEq("id", pg.getBaseColumnName(1), "id base column name");
                    expectEq(ResultSetMetaData.columnNoNulls, rmd.isNullable(1), "id isNullable");
                    expectEq(ResultSetMetaData.columnNullable, rmd.isNullable(3), "note isNullable");
                }
            }
        });

        check("prepared statement metadata before execute", () -> {
            try (PreparedStatement ps = c.prepareStatement("SELECT amount FROM jdbc_s.orders WHERE id = ?")) {
                ResultSetMetaData rmd = ps.getMetaData();
                expect(rmd != null, "null metadata");
                expectEq("numeric", rmd.getColumnTypeName(1), "amount type name");
                expectEq(1, ps.getParameterMetaData().getParameterCount(), "parameter count");
            }
        });

        c.close();
        if (failures > 0) {
            System.out.println(failures + " check(s) failed");
            System.exit(1);
        }
        System.out.println("jdbc client done");
    }
}
