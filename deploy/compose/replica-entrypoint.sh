#!/bin/bash
# Entrypoint of the compose replica: on first start, clone the primary with
# pg_basebackup (-R writes standby.signal and primary_conninfo; no replication
# slot, so wiping only the replica's volume never leaves one behind: the
# primary keeps wal_keep_size of WAL instead), then run PostgreSQL as a hot
# standby. Later starts find PGDATA
# populated and just run PostgreSQL.
# Runs as root (the image's default) and drops to postgres with gosu, which
# the official image ships.
set -euo pipefail

: "${PGDATA:=/var/lib/postgresql/data/pgdata}"
: "${PRIMARY_HOST:=primary}"
: "${PRIMARY_PORT:=5432}"
: "${REPLICATION_USER:=replicator}"

mkdir -p "$PGDATA"
chown -R postgres:postgres "$(dirname "$PGDATA")"
chmod 0700 "$PGDATA"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  echo "replica: cloning $PRIMARY_HOST:$PRIMARY_PORT into $PGDATA"
  until gosu postgres pg_isready -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -q; do
    sleep 1
  done
  export PGPASSWORD="$REPLICATION_PASSWORD"
  gosu postgres pg_basebackup \
    -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -U "$REPLICATION_USER" \
    -D "$PGDATA" -R -X stream --checkpoint=fast
  unset PGPASSWORD
fi

exec gosu postgres postgres -D "$PGDATA" -c hot_standby=on
