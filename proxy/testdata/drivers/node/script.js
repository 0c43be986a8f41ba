// node-postgres workload for proxy/drivers_test.go (see drvWant there for
// the contract). Usage: node script.js DSN PREFIX WORKERS POOL_MAX
//
// WORKERS workers share one pg.Pool of at most POOL_MAX clients; each
// worker checks out a client for its whole run. Inserts use a named
// prepared query ({name, text, values}); COPY uses pg-copy-streams; the
// cursor uses pg-cursor (portal + Execute with a row limit) inside a
// transaction. Prints {"workers":[...],"extra":{...}} on stdout.
'use strict';

const { Pool } = require('pg');
const Cursor = require('pg-cursor');
const { from: copyFrom } = require('pg-copy-streams');
const { Readable } = require('stream');
const { pipeline } = require('stream/promises');

const [dsn, p, workersArg, poolMaxArg] = process.argv.slice(2);
const workers = Number(workersArg);
const pool = new Pool({ connectionString: dsn, max: Number(poolMaxArg) });

async function code(promise) {
  try {
    await promise;
    return 'no error';
  } catch (e) {
    return e.code || String(e);
  }
}

async function worker(w) {
  const r = { w, pids: [] };
  const c = await pool.connect();
  try {
    const pid = async () => r.pids.push((await c.query('SELECT pg_backend_pid() AS p')).rows[0].p);
    await pid();
    let res = await c.query('SELECT $1::int * 2 AS d, upper($2::text) AS u', [(w + 1) * 7, `w-${w}`]);
    r.echo = `${res.rows[0].d}:${res.rows[0].u}`;

    const ins = {
      name: `${p}_ins`,
      text: `INSERT INTO ${p}_items (id, worker, label, qty) VALUES ($1, $2, $3, $4)`,
    };
    for (let i = 0; i < 10; i++) {
      await c.query({ ...ins, values: [w * 1000 + i, w, `w${w}-${i}`, i] });
    }
    const countSum = {
      name: `${p}_countsum`,
      text: `SELECT count(*)::int AS n, coalesce(sum(qty), 0)::int AS s FROM ${p}_items WHERE worker = $1`,
      values: [w],
    };
    res = await c.query(countSum);
    r.count = res.rows[0].n;
    r.sum = res.rows[0].s;

    await c.query('BEGIN');
    res = await c.query(`UPDATE ${p}_items SET qty = qty + 100 WHERE worker = $1 AND id % 2 = 0`, [w]);
    r.updated = res.rowCount;
    r.sum_in_tx = (await c.query(countSum)).rows[0].s;
    await c.query('COMMIT');
    r.sum_after_commit = (await c.query(countSum)).rows[0].s;

    await c.query('BEGIN');
    r.deleted = (await c.query(`DELETE FROM ${p}_items WHERE worker = $1`, [w])).rowCount;
    r.count_in_tx = (await c.query(countSum)).rows[0].n;
    await c.query('ROLLBACK');
    r.count_after_rollback = (await c.query(countSum)).rows[0].n;
    await pid();

    r.div0 = await code(c.query('SELECT 1/0'));
    r.after_div0 = (await c.query('SELECT 1 AS one')).rows[0].one;
    await c.query('BEGIN');
    await c.query({ ...ins, values: [w * 1000 + 50, w, 'doomed', 1000] });
    r.dup = await code(c.query({ ...ins, values: [w * 1000, w, 'dup', 0] }));
    r.aborted = await code(c.query('SELECT 1'));
    await c.query('ROLLBACK');
    r.count_after_error = (await c.query(countSum)).rows[0].n;

    const copy = c.query(copyFrom(`COPY ${p}_copy (id, worker, payload) FROM STDIN`));
    const lines = [];
    for (let i = 1; i <= 50; i++) lines.push(`${i}\t${w}\tp${i}\n`);
    await pipeline(Readable.from(lines), copy);
    r.copied = copy.rowCount;
    res = await c.query(`SELECT count(*)::int AS n, coalesce(sum(id), 0)::int AS s FROM ${p}_copy WHERE worker = $1`, [w]);
    r.copy_count = res.rows[0].n;
    r.copy_sum = res.rows[0].s;

    await c.query('BEGIN');
    const cur = c.query(new Cursor(`SELECT id FROM ${p}_copy WHERE worker = $1 ORDER BY id`, [w]));
    let rows = 0, sum = 0, fetches = 0;
    for (;;) {
      const got = await cur.read(20);
      if (got.length === 0) break;
      fetches++;
      for (const row of got) {
        rows++;
        sum += row.id;
      }
    }
    await cur.close();
    await c.query('COMMIT');
    r.cursor_rows = rows;
    r.cursor_sum = sum;
    r.cursor_fetches = fetches;
    await pid();
  } finally {
    c.release();
  }
  return r;
}

async function main() {
  const results = await Promise.all(Array.from({ length: workers }, (_, w) => worker(w)));
  await pool.end();
  process.stdout.write(JSON.stringify({ workers: results, extra: {} }) + '\n');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
