-- SET search_path holds for every later statement of the session.
SET client_min_messages = warning;
DROP SCHEMA IF EXISTS psql_s1 CASCADE;
CREATE SCHEMA psql_s1;
CREATE TABLE psql_s1.only_in_s1 (id int, v text);
INSERT INTO psql_s1.only_in_s1 VALUES (1, 'from s1');
SHOW search_path;
SELECT v FROM only_in_s1;
SET search_path TO psql_s1;
SHOW search_path;
SELECT v FROM only_in_s1;
SELECT 1 AS filler_1;
SELECT 2 AS filler_2;
SELECT v AS still_s1 FROM only_in_s1;
BEGIN;
SET LOCAL search_path TO public;
SHOW search_path;
COMMIT;
SHOW search_path;
SELECT count(*) AS still_visible FROM only_in_s1;
-- A failed transaction does not lose the session setting.
BEGIN;
SELECT 1/0;
ROLLBACK;
SHOW search_path;
-- SET inside a rolled-back transaction is undone.
BEGIN;
SET search_path TO public;
ROLLBACK;
SHOW search_path;
RESET search_path;
SHOW search_path;
SET search_path TO psql_s1, public;
SELECT current_schemas(false);
RESET ALL;
SHOW search_path;
DROP SCHEMA psql_s1 CASCADE;
