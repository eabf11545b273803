// node-postgres (`pg` from npm) against a running streamhouse: what a Node
// service does with it. Usage: node node_postgres.js PG_PORT
// Exits non-zero with a message on the first mismatch.

const assert = require("node:assert/strict");
const { Client, Pool } = require("pg");

const port = Number(process.argv[2]);
const config = { host: "127.0.0.1", port, database: "streamhouse", user: "node" };

async function main() {
  const client = new Client(config);
  await client.connect();

  // Simple protocol (no parameters): DDL and a multi-row INSERT.
  await client.query(
    "CREATE TABLE node_orders (id BIGINT PRIMARY KEY, customer VARCHAR(20), amount NUMERIC(12,2), " +
      "qty INT, price DOUBLE PRECISION, paid BOOLEAN, placed TIMESTAMP, day DATE, tags TEXT[], meta JSONB)",
  );
  const inserted = await client.query(
    "INSERT INTO node_orders VALUES " +
      "(1, 'ann', 12.50, 2, 1.5, true, '2024-03-05 10:00:00', '2024-03-05', make_array('a', 'b'), '{\"k\": 1}'), " +
      "(2, 'bob', 7.25, 1, NULL, false, '2024-03-06 11:30:00', '2024-03-06', NULL, NULL)",
  );
  assert.equal(inserted.command, "INSERT");
  assert.equal(inserted.rowCount, 2);

  // Extended protocol: parameters typed by the server from the columns.
  const one = await client.query("SELECT id, customer, amount, qty, price, paid, placed, day, tags FROM node_orders WHERE id = $1", [1]);
  assert.equal(one.rowCount, 1);
  const row = one.rows[0];
  // node-postgres parses int8 and numeric as strings (exact), int4 and float8 as numbers.
  assert.equal(row.id, "1");
  assert.equal(row.customer, "ann");
  assert.equal(row.amount, "12.50");
  assert.equal(row.qty, 2);
  assert.equal(row.price, 1.5);
  assert.equal(row.paid, true);
  assert.ok(row.placed instanceof Date, `placed is ${typeof row.placed}`);
  assert.equal(row.placed.getFullYear(), 2024);
  assert.equal(row.placed.getHours(), 10);
  assert.ok(row.day instanceof Date);
  assert.deepEqual(row.tags, ["a", "b"]);
  // Result metadata: Postgres type oids and the column's table.
  const types = Object.fromEntries(one.fields.map((f) => [f.name, f.dataTypeID]));
  assert.deepEqual(types, { id: 20, customer: 1043, amount: 1700, qty: 23, price: 701, paid: 16, placed: 1114, day: 1082, tags: 1009 });
  assert.ok(one.fields[0].tableID > 0, "tableID");
  assert.equal(one.fields[0].columnID, 1);

  // Parameters of every kind a driver sends as text.
  const params = await client.query(
    "SELECT count(*) AS n FROM node_orders WHERE customer = ANY($1) AND amount > $2 AND placed < $3 AND paid = $4",
    [["ann", "zed"], "10", new Date("2024-12-31T00:00:00Z"), true],
  );
  assert.equal(params.rows[0].n, "1");

  // Named prepared statements, executed twice; rowMode array.
  const named = { name: "by_customer", text: "SELECT id FROM node_orders WHERE customer = $1 ORDER BY id", rowMode: "array" };
  assert.deepEqual((await client.query({ ...named, values: ["bob"] })).rows, [["2"]]);
  assert.deepEqual((await client.query({ ...named, values: ["ann"] })).rows, [["1"]]);

  // Upsert by key (streamhouse's INSERT on an existing key replaces the row), UPDATE, DELETE counts.
  const updated = await client.query("UPDATE node_orders SET qty = qty + $1 WHERE id = $2", [3, 2]);
  assert.equal(updated.rowCount, 1);
  assert.equal((await client.query("SELECT qty FROM node_orders WHERE id = 2")).rows[0].qty, 4);

  // A transaction block. Every statement commits on its own (README,
  // transactions): a ROLLBACK after a write says, as a WARNING, that the
  // write stays.
  const notices = [];
  client.on("notice", (n) => notices.push(n));
  await client.query("BEGIN");
  await client.query("INSERT INTO node_orders (id, customer) VALUES ($1, $2)", [3, "cat"]);
  await client.query("COMMIT");
  await client.query("BEGIN");
  await client.query("INSERT INTO node_orders (id, customer) VALUES ($1, $2)", [4, "dan"]);
  await client.query("ROLLBACK");
  assert.ok(notices.some((n) => n.severity === "WARNING"), JSON.stringify(notices));
  await client.query("DELETE FROM node_orders WHERE id = $1", [4]);
  const ids = await client.query({ text: "SELECT id FROM node_orders ORDER BY id", rowMode: "array" });
  assert.deepEqual(ids.rows.map((r) => r[0]), ["1", "2", "3"]);

  // Errors carry their SQLSTATE, and the connection stays usable.
  await assert.rejects(client.query("SELECT * FROM node_missing"), (e) => e.code === "42P01");
  await assert.rejects(client.query("SELECT 1/0"), (e) => e.code === "22012");
  await assert.rejects(client.query("SELECT $1::int", ["x"]), (e) => e.code === "22P02");
  await assert.rejects(
    client.query("INSERT INTO node_orders (id, qty) VALUES (9, $1)", ["99999999999"]),
    (e) => e.code === "22003",
  );
  assert.equal((await client.query("SELECT 1 AS one")).rowCount, 1);

  // Views and materialized views read like tables.
  await client.query("CREATE MATERIALIZED VIEW node_totals AS SELECT customer, sum(amount) AS total, count(*) AS n FROM node_orders GROUP BY customer");
  const totals = await client.query("SELECT customer, total, n FROM node_totals WHERE total IS NOT NULL ORDER BY customer");
  assert.deepEqual(totals.rows, [
    { customer: "ann", total: "12.50", n: "1" },
    { customer: "bob", total: "7.25", n: "1" },
  ]);
  await client.end();

  // A pool: concurrent queries on several connections.
  const pool = new Pool({ ...config, max: 4 });
  const results = await Promise.all(
    [1, 2, 3, 1, 2, 3].map((id) => pool.query("SELECT customer FROM node_orders WHERE id = $1", [id])),
  );
  assert.deepEqual(results.map((r) => r.rows[0].customer), ["ann", "bob", "cat", "ann", "bob", "cat"]);
  await pool.end();

  console.log("node-postgres ok");
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
