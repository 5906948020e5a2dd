#!/usr/bin/env bash
# A PostgreSQL streaming replica of the local server, on this machine, for the
# cluster tests and benchmarks (README, "Read replicas").
#
#   scripts/clusters/pg-replica.sh start    # pg_basebackup of 127.0.0.1:5432, started on port 5433
#   scripts/clusters/pg-replica.sh stop     # stop it (its data stays: start brings it back)
#   scripts/clusters/pg-replica.sh remove   # stop it, delete its data, its slot and the hba line
#   scripts/clusters/pg-replica.sh status
#
# Environment: PRIMARY_PORT (5432), REPLICA_PORT (5433), CLUSTER_DIR
# (/tmp/asyncstore-clusters). The primary must be reachable as postgres on 127.0.0.1
# with trust authentication (SERVICES.md). If its pg_hba.conf has no line for
# replication connections, start adds one (marked, for 127.0.0.1 only) and remove takes
# it out again. The replica streams through the physical replication slot
# asyncstore_replica, so a stopped replica catches up when started again.
set -euo pipefail

PRIMARY_PORT=${PRIMARY_PORT:-5432}
REPLICA_PORT=${REPLICA_PORT:-5433}
CLUSTER_DIR=${CLUSTER_DIR:-/tmp/asyncstore-clusters}
DATA="$CLUSTER_DIR/pg-replica"
SLOT=asyncstore_replica
MARK="# asyncstore cluster tests: replication from loopback"
BIN=$(dirname "$(readlink -f "$(command -v pg_basebackup)")")
if [ -x "/usr/lib/postgresql/$(ls /usr/lib/postgresql | sort -n | tail -1)/bin/pg_ctl" ]; then
  BIN="/usr/lib/postgresql/$(ls /usr/lib/postgresql | sort -n | tail -1)/bin"
fi

primary() { psql -X -q -At -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -d postgres -c "$1"; }
# PostgreSQL refuses to run as root: the server programs run as postgres.
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

allow_replication() {
  local hba
  hba=$(primary "SHOW hba_file")
  if ! grep -qE '^[[:space:]]*host[[:space:]]+replication[[:space:]]' "$hba"; then
    printf '%s\nhost replication all 127.0.0.1/32 trust\n' "$MARK" >>"$hba"
    primary "SELECT pg_reload_conf()" >/dev/null
  fi
}

forbid_replication() {
  local hba
  hba=$(primary "SHOW hba_file" 2>/dev/null) || return 0
  if grep -qF "$MARK" "$hba"; then
    sed -i "\|$MARK|,+1d" "$hba"
    primary "SELECT pg_reload_conf()" >/dev/null
  fi
}

running() { as_postgres "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

start() {
  mkdir -p "$CLUSTER_DIR"
  chmod 755 "$CLUSTER_DIR"
  if [ ! -f "$DATA/standby.signal" ]; then
    allow_replication
    rm -rf "$DATA"
    install -d -o postgres -g postgres -m 700 "$DATA"
    if [ -z "$(primary "SELECT 1 FROM pg_replication_slots WHERE slot_name = '$SLOT'")" ]; then
      primary "SELECT pg_create_physical_replication_slot('$SLOT')" >/dev/null
    fi
    # -R writes primary_conninfo and standby.signal: the copy starts as a streaming standby.
    as_postgres pg_basebackup -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -D "$DATA" -R -X stream -S "$SLOT" -c fast
    # Debian keeps the configuration outside the data directory: the replica gets its own.
    as_postgres tee "$DATA/postgresql.conf" >/dev/null <<EOF
port = $REPLICA_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DATA'
hot_standby = on
hot_standby_feedback = on
wal_receiver_status_interval = 1s
max_connections = 100
shared_buffers = 32MB
EOF
    as_postgres tee "$DATA/pg_hba.conf" >/dev/null <<EOF
local all all trust
host all all 127.0.0.1/32 trust
EOF
    as_postgres touch "$DATA/pg_ident.conf"
    rm -f "$DATA/postmaster.pid"
  fi
  if ! running; then
    as_postgres "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w -t 60 start >/dev/null
  fi
  for _ in $(seq 60); do
    if [ "$(psql -X -At -h 127.0.0.1 -p "$REPLICA_PORT" -U postgres -d postgres \
        -c "SELECT status FROM pg_stat_wal_receiver" 2>/dev/null)" = streaming ]; then
      echo "PostgreSQL replica streaming on 127.0.0.1:$REPLICA_PORT ($DATA)"
      return 0
    fi
    sleep 1
  done
  echo "the replica on port $REPLICA_PORT did not start streaming; its log:" >&2
  tail -20 "$DATA/server.log" >&2 || true
  return 1
}

stop() {
  if [ -d "$DATA" ] && running; then
    as_postgres "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null
  fi
}

remove() {
  stop || true
  rm -rf "$DATA"
  primary "SELECT pg_drop_replication_slot('$SLOT') FROM pg_replication_slots WHERE slot_name = '$SLOT'" \
    >/dev/null 2>&1 || true
  forbid_replication || true
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  remove) remove ;;
  status) if running; then echo running; else echo stopped; exit 3; fi ;;
  *) echo "usage: $0 start|stop|remove|status" >&2; exit 2 ;;
esac
