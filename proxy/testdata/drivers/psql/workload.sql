-- psql workload for proxy/drivers_test.go (see drvWant there for the
-- contract). The test replaces @PREFIX@ and @COPYFILE@ (\copy does not
-- interpolate variables) and runs it as
--   psql -X -q -A -t -v ON_ERROR_STOP=0 -v ON_ERROR_ROLLBACK=off -v w=N -f FILE
-- Output lines are key=value; pid=, row=, frow= and fetched= may repeat.
-- Inserts are generated with \gexec, COPY uses \copy, errors are read from
-- LAST_ERROR_SQLSTATE, and an error inside a transaction aborts it
-- (ON_ERROR_ROLLBACK off) until ROLLBACK.
\pset fieldsep '\n'
SELECT 'pid=' || pg_backend_pid();
SELECT 'echo=' || (:w + 1) * 7 * 2 || ':' || upper('w-' || :w);

SELECT format('INSERT INTO @PREFIX@_items (id, worker, label, qty) VALUES (%s, %s, %L, %s)',
              :w * 1000 + i, :w, 'w' || :w || '-' || i, i)
  FROM generate_series(0, 9) i \gexec
SELECT 'count=' || count(*), 'sum=' || coalesce(sum(qty), 0) FROM @PREFIX@_items WHERE worker = :w;

BEGIN;
UPDATE @PREFIX@_items SET qty = qty + 100 WHERE worker = :w AND id % 2 = 0;
\echo updated=:ROW_COUNT
SELECT 'sum_in_tx=' || sum(qty) FROM @PREFIX@_items WHERE worker = :w;
COMMIT;
SELECT 'sum_after_commit=' || sum(qty) FROM @PREFIX@_items WHERE worker = :w;

BEGIN;
DELETE FROM @PREFIX@_items WHERE worker = :w;
\echo deleted=:ROW_COUNT
SELECT 'count_in_tx=' || count(*) FROM @PREFIX@_items WHERE worker = :w;
ROLLBACK;
SELECT 'count_after_rollback=' || count(*) FROM @PREFIX@_items WHERE worker = :w;
SELECT 'pid=' || pg_backend_pid();

SELECT 1/0;
\echo div0=:LAST_ERROR_SQLSTATE
SELECT 'after_div0=' || 1;
BEGIN;
INSERT INTO @PREFIX@_items VALUES (:w * 1000 + 50, :w, 'doomed', 1000);
INSERT INTO @PREFIX@_items VALUES (:w * 1000, :w, 'dup', 0);
\echo dup=:LAST_ERROR_SQLSTATE
SELECT 1;
\echo aborted=:LAST_ERROR_SQLSTATE
ROLLBACK;
SELECT 'count_after_error=' || count(*) FROM @PREFIX@_items WHERE worker = :w;

\copy @PREFIX@_copy (id, worker, payload) FROM '@COPYFILE@'
\echo copied=:ROW_COUNT
SELECT 'copy_count=' || count(*), 'copy_sum=' || coalesce(sum(id), 0) FROM @PREFIX@_copy WHERE worker = :w;

BEGIN;
DECLARE cur CURSOR FOR SELECT 'row=' || id FROM @PREFIX@_copy WHERE worker = :w ORDER BY id;
FETCH 20 FROM cur;
\echo fetched=:ROW_COUNT
FETCH 20 FROM cur;
\echo fetched=:ROW_COUNT
FETCH 20 FROM cur;
\echo fetched=:ROW_COUNT
FETCH 20 FROM cur;
\echo fetched=:ROW_COUNT
COMMIT;

-- FETCH_COUNT makes psql itself read a SELECT through a cursor in a
-- transaction of its own.
\set FETCH_COUNT 15
SELECT 'frow=' || id FROM @PREFIX@_copy WHERE worker = :w ORDER BY id;
\unset FETCH_COUNT
SELECT 'pid=' || pg_backend_pid();
