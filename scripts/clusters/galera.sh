#!/usr/bin/env bash
# A 3-node MariaDB Galera cluster on this machine, for the cluster tests and benchmarks
# (README, "A MariaDB Galera cluster").
#
#   scripts/clusters/galera.sh start    # nodes on 127.0.0.1:3311, 3312, 3313, bootstrapped from the first
#   scripts/clusters/galera.sh stop     # stop the nodes (their data stays: start brings them back)
#   scripts/clusters/galera.sh remove   # stop them and delete their data
#   scripts/clusters/galera.sh status
#
# Environment: CLUSTER_DIR (/tmp/asyncstore-clusters), GALERA_BASE_PORT (3310: nodes on
# base+1..base+3; group communication on 4570+n, IST on 4580+n, SST on 4590+n). Every
# node has root@127.0.0.1 without a password, as the test server has (SERVICES.md).
# The nodes run the settings a cluster behind asyncstore needs: binlog_format=ROW,
# innodb_autoinc_lock_mode=2, wsrep_sync_wait=1 (a read waits for what the cluster
# committed before it: read-your-writes across nodes), local_infile=1.
set -euo pipefail
# shellcheck source=scripts/clusters/mariadbd.sh
. "$(dirname "$0")/mariadbd.sh"

CLUSTER_DIR=${CLUSTER_DIR:-/tmp/asyncstore-clusters}
BASE=${GALERA_BASE_PORT:-3310}
DIR="$CLUSTER_DIR/galera"
NODES=(1 2 3)
PROVIDER=$(ls /usr/lib/galera/libgalera_smm.so /usr/lib/libgalera_smm.so 2>/dev/null | head -1)
ADDRESS="gcomm://127.0.0.1:4571,127.0.0.1:4572,127.0.0.1:4573"

port() { echo $((BASE + $1)); }
node_dir() { echo "$DIR/node$1"; }
sql() { mariadb --protocol=tcp -h 127.0.0.1 -P "$(port "$1")" -uroot -N -B -e "$2"; }
state() { sql "$1" "SHOW STATUS LIKE 'wsrep_local_state_comment'" 2>/dev/null | cut -f2; }
running() { mariadbd_running "$(node_dir "$1")"; }

configure() {
  local n=$1 d
  d=$(node_dir "$n")
  install -d -o mysql -g mysql -m 750 "$d" "$d/data"
  cat >"$d/my.cnf" <<EOF
[mysqld]
datadir = $d/data
socket = $d/mysqld.sock
pid-file = $d/mysqld.pid
log-error = $d/error.log
port = $(port "$n")
bind-address = 127.0.0.1
user = mysql
binlog_format = ROW
default_storage_engine = InnoDB
innodb_autoinc_lock_mode = 2
innodb_buffer_pool_size = 64M
local_infile = 1
max_connections = 300
character_set_server = utf8mb4
collation_server = utf8mb4_general_ci
wsrep_on = ON
wsrep_provider = $PROVIDER
wsrep_cluster_name = asyncstore
wsrep_cluster_address = $ADDRESS
wsrep_node_name = node$n
wsrep_node_address = 127.0.0.1:$((4570 + n))
wsrep_provider_options = "base_port=$((4570 + n)); ist.recv_addr=127.0.0.1:$((4580 + n)); gcache.size=64M"
wsrep_sst_method = rsync
wsrep_sst_receive_address = 127.0.0.1:$((4590 + n))
wsrep_sync_wait = 1
wsrep_slave_threads = 2
EOF
}

launch() {  # node, extra options
  local n=$1
  shift
  mariadbd_launch "$(node_dir "$n")" "$@"
}

wait_synced() {
  local n=$1
  for _ in $(seq 120); do
    if [ "$(state "$n")" = Synced ]; then return 0; fi
    sleep 0.5
  done
  echo "galera node $n (port $(port "$n")) did not reach Synced; its log:" >&2
  tail -30 "$(node_dir "$n")/error.log" >&2 || true
  return 1
}

start() {
  mkdir -p "$CLUSTER_DIR"
  chmod 755 "$CLUSTER_DIR"
  install -d -o mysql -g mysql -m 750 "$DIR"
  if [ -z "$PROVIDER" ]; then echo "no Galera provider (apt-get install galera-4)" >&2; return 1; fi
  local fresh=0
  if [ ! -d "$(node_dir 1)/data/mysql" ]; then
    fresh=1
    for n in "${NODES[@]}"; do rm -rf "$(node_dir "$n")"; configure "$n"; done
    mariadb-install-db --defaults-file="$(node_dir 1)/my.cnf" --user=mysql \
      --auth-root-authentication-method=normal >"$(node_dir 1)/install.log" 2>&1
  fi
  if ! running 1; then
    # The first node starts a new cluster unless another node is up to join.
    if running 2 || running 3; then launch 1; else launch 1 --wsrep-new-cluster; fi
  fi
  wait_synced 1
  if [ "$fresh" = 1 ]; then
    mariadb -uroot --socket="$(node_dir 1)/mysqld.sock" -e \
      "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'; GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
       CREATE DATABASE IF NOT EXISTS test;"
  fi
  for n in 2 3; do
    if ! running "$n"; then launch "$n"; fi
    wait_synced "$n"  # a joiner gets the first node's data by SST (rsync), then syncs
  done
  echo "Galera cluster of $(sql 1 "SHOW STATUS LIKE 'wsrep_cluster_size'" | cut -f2) nodes on 127.0.0.1:$(port 1),$(port 2),$(port 3) ($DIR)"
}

stop() {
  local n
  for n in 3 2 1; do  # the first node last: it holds the newest state for the next start
    mariadbd_stop "$(node_dir "$n")"
  done
  # The next start bootstraps from the first node, which stopped last: mark it safe to.
  if [ -f "$(node_dir 1)/data/grastate.dat" ]; then
    sed -i 's/^safe_to_bootstrap: 0/safe_to_bootstrap: 1/' "$(node_dir 1)/data/grastate.dat"
  fi
}

remove() {
  stop || true
  rm -rf "$DIR"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  remove) remove ;;
  status)
    for n in "${NODES[@]}"; do echo "node $n (port $(port "$n")): $(state "$n" || true)"; done ;;
  *) echo "usage: $0 start|stop|remove|status" >&2; exit 2 ;;
esac
