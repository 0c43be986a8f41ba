-- Several statements in one simple-protocol Query message (psql sends
-- everything up to an unescaped semicolon as one string; \; joins them).
SET client_min_messages = warning;
DROP SCHEMA IF EXISTS psql_multi CASCADE;
CREATE SCHEMA psql_multi;
CREATE TABLE psql_multi.t (id int PRIMARY KEY, v text);
SELECT 1 AS one \; SELECT 'two' AS two \; SELECT 3 AS three;
INSERT INTO psql_multi.t VALUES (1, 'a') \; INSERT INTO psql_multi.t VALUES (2, 'b') \; SELECT count(*) AS rows_after_insert FROM psql_multi.t;
-- An error in the middle aborts the whole implicit transaction: row 3 is not kept, 'never' is not returned.
INSERT INTO psql_multi.t VALUES (3, 'c') \; SELECT 1/0 AS boom \; SELECT 'never' AS never;
SELECT id, v FROM psql_multi.t ORDER BY id;
-- Explicit transaction control inside one message.
BEGIN \; INSERT INTO psql_multi.t VALUES (4, 'd') \; COMMIT \; SELECT count(*) AS rows_after_commit FROM psql_multi.t;
-- Empty statements and comments only.
;
SELECT /* inline; comment */ 'semicolon; in a string' AS s \; SELECT E'tab\there' AS t;
DROP SCHEMA psql_multi CASCADE;
