#!/bin/bash
# Runs once, on the primary's first start (docker-entrypoint-initdb.d), as the
# postgres user with the server listening on the Unix socket only.
# Creates the application role and database pgsluice serves, and the role the
# replica streams with, and lets that role connect for replication.
set -euo pipefail

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v app_password="$APP_PASSWORD" -v repl_password="$REPLICATION_PASSWORD" <<'SQL'
SET password_encryption = 'scram-sha-256';
CREATE ROLE app LOGIN PASSWORD :'app_password';
CREATE DATABASE app OWNER app;
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD :'repl_password';
SQL

# The image's pg_hba.conf ends with "host all all all scram-sha-256", which
# does not cover replication connections.
echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"
