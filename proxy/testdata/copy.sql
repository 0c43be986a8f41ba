-- COPY FROM STDIN (data inline in the script), COPY TO STDOUT, \copy.
SET client_min_messages = warning;
DROP SCHEMA IF EXISTS psql_copy CASCADE;
CREATE SCHEMA psql_copy;
CREATE TABLE psql_copy.t (id int PRIMARY KEY, name text, score numeric);
COPY psql_copy.t FROM STDIN;
1	alice	1.5
2	bob	\N
3	carol "c"	-7
\.
COPY psql_copy.t (id, name, score) FROM STDIN WITH (FORMAT csv, HEADER true);
id,name,score
4,"dave, jr",100
5,eve,0.001
\.
SELECT count(*) AS copied FROM psql_copy.t;
COPY psql_copy.t TO STDOUT;
COPY (SELECT id, name FROM psql_copy.t WHERE id > 3 ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER true);
\copy psql_copy.t TO STDOUT WITH (FORMAT csv)
\copy (SELECT name FROM psql_copy.t WHERE score IS NULL) TO STDOUT
-- A bad row fails the whole COPY; the table is unchanged and the session goes on.
COPY psql_copy.t FROM STDIN;
6	frank	1
seven	grace	2
\.
SELECT count(*) AS after_bad_copy FROM psql_copy.t;
-- COPY inside a transaction that is rolled back.
BEGIN;
COPY psql_copy.t FROM STDIN;
8	heidi	8
\.
SELECT count(*) AS inside_txn FROM psql_copy.t;
ROLLBACK;
SELECT count(*) AS after_rollback FROM psql_copy.t;
DROP SCHEMA psql_copy CASCADE;
