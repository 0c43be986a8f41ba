"""psycopg2 workload for proxy/drivers_test.go (see drvWant there for the
contract). Usage: /usr/bin/python3 workload.py DSN PREFIX WORKERS

Each of WORKERS threads opens its own connection (psycopg2's default: a
transaction is opened implicitly and ended by commit()/rollback()). Inserts
use executemany, COPY uses copy_expert, and the cursor is a named
(server-side) cursor inside a transaction. Prints
{"workers":[...],"extra":{...}} on stdout.
"""

import io
import json
import sys
import threading

import psycopg2
import psycopg2.errors

dsn, p, nworkers = sys.argv[1], sys.argv[2], int(sys.argv[3])


def pgcode(fn):
    try:
        fn()
    except psycopg2.Error as e:
        return e.pgcode
    return "no error"


def worker(w, results, failures):
    try:
        conn = psycopg2.connect(dsn)
        try:
            results[w] = run(conn, w)
        finally:
            conn.close()
    except Exception as e:  # reported by the Go test
        failures.append("worker %d: %r" % (w, e))


def run(conn, w):
    r = {"w": w, "pids": []}
    cur = conn.cursor()

    def pid():
        cur.execute("SELECT pg_backend_pid()")
        r["pids"].append(cur.fetchone()[0])
        conn.commit()

    pid()
    cur.execute("SELECT %s::int * 2, upper(%s::text)", ((w + 1) * 7, "w-%d" % w))
    d, u = cur.fetchone()
    r["echo"] = "%d:%s" % (d, u)
    conn.commit()

    cur.executemany(
        "INSERT INTO " + p + "_items (id, worker, label, qty) VALUES (%s, %s, %s, %s)",
        [(w * 1000 + i, w, "w%d-%d" % (w, i), i) for i in range(10)],
    )
    conn.commit()
    count_sum = "SELECT count(*), coalesce(sum(qty), 0) FROM " + p + "_items WHERE worker = %s"
    cur.execute(count_sum, (w,))
    r["count"], r["sum"] = cur.fetchone()
    conn.commit()

    cur.execute("UPDATE " + p + "_items SET qty = qty + 100 WHERE worker = %s AND id %% 2 = 0", (w,))
    r["updated"] = cur.rowcount
    cur.execute(count_sum, (w,))
    r["sum_in_tx"] = cur.fetchone()[1]
    conn.commit()
    cur.execute(count_sum, (w,))
    r["sum_after_commit"] = cur.fetchone()[1]
    conn.commit()

    cur.execute("DELETE FROM " + p + "_items WHERE worker = %s", (w,))
    r["deleted"] = cur.rowcount
    cur.execute(count_sum, (w,))
    r["count_in_tx"] = cur.fetchone()[0]
    conn.rollback()
    cur.execute(count_sum, (w,))
    r["count_after_rollback"] = cur.fetchone()[0]
    conn.commit()
    pid()

    r["div0"] = pgcode(lambda: cur.execute("SELECT 1/0"))
    conn.rollback()
    cur.execute("SELECT 1")
    r["after_div0"] = cur.fetchone()[0]
    conn.commit()
    ins = "INSERT INTO " + p + "_items (id, worker, label, qty) VALUES (%s, %s, %s, %s)"
    cur.execute(ins, (w * 1000 + 50, w, "doomed", 1000))
    r["dup"] = pgcode(lambda: cur.execute(ins, (w * 1000, w, "dup", 0)))
    r["aborted"] = pgcode(lambda: cur.execute("SELECT 1"))
    conn.rollback()
    cur.execute(count_sum, (w,))
    r["count_after_error"] = cur.fetchone()[0]
    conn.commit()

    data = "".join("%d\t%d\tp%d\n" % (i, w, i) for i in range(1, 51))
    cur.copy_expert("COPY " + p + "_copy (id, worker, payload) FROM STDIN", io.StringIO(data))
    r["copied"] = cur.rowcount
    conn.commit()
    cur.execute("SELECT count(*), coalesce(sum(id), 0) FROM " + p + "_copy WHERE worker = %s", (w,))
    r["copy_count"], r["copy_sum"] = cur.fetchone()
    conn.commit()

    named = conn.cursor(name="cur_%d" % w)
    named.execute("SELECT id FROM " + p + "_copy WHERE worker = %s ORDER BY id", (w,))
    rows = total = fetches = 0
    while True:
        got = named.fetchmany(20)
        if not got:
            break
        fetches += 1
        rows += len(got)
        total += sum(g[0] for g in got)
    named.close()
    conn.commit()
    r["cursor_rows"], r["cursor_sum"], r["cursor_fetches"] = rows, total, fetches
    pid()
    return r


def main():
    results, failures = {}, []
    threads = [threading.Thread(target=worker, args=(w, results, failures)) for w in range(nworkers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        sys.stderr.write("\n".join(failures) + "\n")
        sys.exit(1)
    json.dump({"workers": [results[w] for w in sorted(results)], "extra": {}}, sys.stdout)
    sys.stdout.write("\n")


main()
