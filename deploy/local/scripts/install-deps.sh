#!/usr/bin/env bash
# Installs what `make test`, `make demo` and `make bench` need and the machine
# lacks: PostgreSQL 15 server programs (initdb, pg_ctl, pg_basebackup,
# pgbench), psql, redis-server and pgbouncer, and the client libraries of the
# proxy's driver matrix (proxy/drivers_test.go): psycopg2 for the system
# python3, a JDK with the PostgreSQL JDBC driver, and node with npm, from
# Debian's packages.
# Idempotent: installs nothing when everything is present.
set -euo pipefail

need=()
pgbin=""
if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
  pgbin=$(pg_config --bindir)
fi
for d in /usr/lib/postgresql/*/bin; do
  [ -x "$d/initdb" ] && pgbin=$d
done
[ -n "$pgbin" ] || need+=(postgresql-15)
command -v psql >/dev/null 2>&1 || need+=(postgresql-client-15)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || need+=(pgbouncer)
# Client matrix. The tests use /usr/bin/python3 (not a pyenv/venv python).
/usr/bin/python3 -c 'import psycopg2' >/dev/null 2>&1 || need+=(python3-psycopg2)
command -v javac >/dev/null 2>&1 || need+=(default-jdk-headless)
[ -f /usr/share/java/postgresql.jar ] || need+=(libpostgresql-jdbc-java)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)

command -v promtool >/dev/null 2>&1 || need+=(prometheus)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
echo "install-deps: installing ${need[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
    echo "install-deps: missing ${need[*]}; run as root: apt-get install -y ${need[*]}" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian starts a default cluster and redis on install; the tests start their
# own servers on free ports, so stop the packaged ones to save memory.
if command -v service >/dev/null 2>&1; then
  $SUDO service postgresql stop >/dev/null 2>&1 || true
  $SUDO service redis-server stop >/dev/null 2>&1 || true
  $SUDO service pgbouncer stop >/dev/null 2>&1 || true
fi
