#!/usr/bin/env bash
# make demo: starts a local PostgreSQL 15 primary + streaming replica + Redis
# on free loopback ports, runs pgsluice in front of them with its embedded
# defaults (only the addresses and the demo user come from the environment),
# shows a short workload going through it, and keeps serving until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/../../.."
work=$(mktemp -d /tmp/pgsluice-demo.XXXXXX)
envfile=$work/cluster.env
cleanup() {
  trap - EXIT INT TERM
  echo
  echo "demo: stopping pgsluice and the local cluster"
  [ -n "${proxy_pid:-}" ] && kill "$proxy_pid" 2>/dev/null && wait "$proxy_pid" 2>/dev/null || true
  [ -n "${cluster_pid:-}" ] && kill "$cluster_pid" 2>/dev/null && wait "$cluster_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

echo "demo: starting PostgreSQL primary + streaming replica + Redis (under $work)"
bin/pgsluice-cluster -replica -redis -dir "$work/data" -env-file "$envfile" >"$work/cluster.log" 2>&1 &
cluster_pid=$!
for _ in $(seq 1 120); do [ -s "$envfile" ] && break; sleep 0.5; done
[ -s "$envfile" ] || { cat "$work/cluster.log"; echo "demo: cluster did not start"; exit 1; }
# Read the harness's variables without letting them into pgsluice's
# environment (PGSLUICE_* variables are configuration keys there).
read -r primary_port replica_port redis_addr bindir < <(env -i bash -c "source '$envfile'; echo \$PGSLUICE_PRIMARY_PORT \$PGSLUICE_REPLICA_PORT \$REDIS_ADDR \$PGSLUICE_PG_BINDIR")

port=${DEMO_PORT:-6432}
admin=${DEMO_ADMIN:-127.0.0.1:9930}
echo "demo: starting pgsluice on 127.0.0.1:$port (admin http://$admin)"
env -i PATH="$PATH" \
  PGSLUICE_LISTEN=127.0.0.1:$port PGSLUICE_ADMIN_LISTEN=$admin \
  PGSLUICE_PRIMARY_HOST=127.0.0.1 PGSLUICE_PRIMARY_PORT=$primary_port \
  PGSLUICE_REPLICAS=127.0.0.1:$replica_port \
  PGSLUICE_AUTH_USERS=app:secret PGSLUICE_POOL_SIZE=10 \
  bin/pgsluice >"$work/pgsluice.log" 2>&1 &
proxy_pid=$!
for _ in $(seq 1 50); do curl -fs "http://$admin/healthz" >/dev/null 2>&1 && break; sleep 0.2; done
kill -0 "$proxy_pid" 2>/dev/null || { cat "$work/pgsluice.log"; echo "demo: pgsluice exited (is port $port taken? set DEMO_PORT)"; exit 1; }
curl -fs "http://$admin/healthz" >/dev/null || { cat "$work/pgsluice.log"; echo "demo: pgsluice did not start"; exit 1; }

dsn="postgres://app:secret@127.0.0.1:$port/app?sslmode=disable"
export PGPASSWORD=secret
echo "demo: loading pgbench tables on the primary"
"$bindir/pgbench" -i -s 1 -q "postgres://app:secret@127.0.0.1:$primary_port/app?sslmode=disable" >/dev/null 2>&1
echo "demo: psql through pgsluice:"
psql -X "$dsn" -c "SELECT current_user, version()" -c "SELECT count(*) AS accounts FROM pgbench_accounts"
for mode in simple extended prepared; do
  printf 'demo: pgbench -S -M %-8s 100 clients on a pool of 10 for 3s: ' "$mode"
  "$bindir/pgbench" -h 127.0.0.1 -p "$port" -U app -S -M "$mode" -c 100 -j 2 -T 3 app 2>&1 \
    | awk '/failed transactions/{f=$5} /^tps/{t=$3} END{printf "%s tps, %s failed\n", t, f}'
done
echo "demo: server connections on the primary (pool.size 10 caps them):"
psql -X -At "postgres://postgres@127.0.0.1:$primary_port/app?sslmode=disable" \
  -c "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'"
echo "demo: pool figures from http://$admin/metrics:"
curl -fs "http://$admin/metrics" | grep -E '^pgsluice_(pool_|client_connections)' | grep -v '_bucket' || true
cat <<MSG

  pgsluice is serving. Point any driver at it:
      $dsn
  e.g.  psql "$dsn"
  Metrics: http://$admin/metrics   Logs: $work/pgsluice.log
  Press Ctrl-C to stop.
MSG
wait "$proxy_pid"
