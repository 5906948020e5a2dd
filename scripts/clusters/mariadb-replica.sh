#!/usr/bin/env bash
# A MariaDB primary with an asynchronous replica, on this machine, for the replica tests
# (README, "Read replicas"). The test server (3306) runs without a binary log, so the
# pair is its own: a primary on 127.0.0.1:3321 (binary log, GTID) and a replica on 3322
# replicating from it.
#
#   scripts/clusters/mariadb-replica.sh start    # install both (first time), start, wait until replicating
#   scripts/clusters/mariadb-replica.sh stop     # stop both (their data stays)
#   scripts/clusters/mariadb-replica.sh remove   # stop both and delete their data
#   scripts/clusters/mariadb-replica.sh status
#
# Environment: CLUSTER_DIR (/tmp/asyncstore-clusters). Both have root@127.0.0.1 without
# a password, as the test server has (SERVICES.md).
set -euo pipefail
# shellcheck source=scripts/clusters/mariadbd.sh
. "$(dirname "$0")/mariadbd.sh"

CLUSTER_DIR=${CLUSTER_DIR:-/tmp/asyncstore-clusters}
DIR="$CLUSTER_DIR/mariadb-replica"
PRIMARY=3321
REPLICA=3322

node_dir() { echo "$DIR/$1"; }
sql() { mariadb --protocol=tcp -h 127.0.0.1 -P "$1" -uroot -N -B -e "$2"; }
local_sql() { mariadb -uroot --socket="$(node_dir "$1")/mysqld.sock" -e "$2"; }
running() { mariadbd_running "$(node_dir "$1")"; }

configure() {  # name, port, server id, extra lines
  local d
  d=$(node_dir "$1")
  install -d -o mysql -g mysql -m 750 "$d" "$d/data"
  cat >"$d/my.cnf" <<EOF
[mysqld]
datadir = $d/data
socket = $d/mysqld.sock
pid-file = $d/mysqld.pid
log-error = $d/error.log
port = $2
bind-address = 127.0.0.1
user = mysql
server_id = $3
local_infile = 1
innodb_buffer_pool_size = 64M
character_set_server = utf8mb4
collation_server = utf8mb4_general_ci
$4
EOF
}

launch() {
  local d
  d=$(node_dir "$1")
  mariadbd_launch "$d"
  for _ in $(seq 60); do
    if [ -S "$d/mysqld.sock" ] && local_sql "$1" "SELECT 1" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  echo "mariadbd $1 did not start; its log:" >&2
  tail -20 "$d/error.log" >&2 || true
  return 1
}

start() {
  mkdir -p "$CLUSTER_DIR"
  chmod 755 "$CLUSTER_DIR"
  install -d -o mysql -g mysql -m 750 "$DIR"
  local fresh=0
  if [ ! -d "$(node_dir primary)/data/mysql" ]; then
    fresh=1
    rm -rf "$DIR"/primary "$DIR"/replica
    configure primary "$PRIMARY" 21 "log_bin = mariadb-bin
binlog_format = ROW"
    configure replica "$REPLICA" 22 "read_only = ON
relay_log = relay-bin"
    for n in primary replica; do
      mariadb-install-db --defaults-file="$(node_dir "$n")/my.cnf" --user=mysql \
        --auth-root-authentication-method=normal >"$(node_dir "$n")/install.log" 2>&1
    done
  fi
  running primary || launch primary
  running replica || launch replica
  if [ "$fresh" = 1 ]; then
    # The TCP user on each server by itself (not written to the binary log), then the
    # replica follows the primary from its first transaction on.
    for n in primary replica; do
      local_sql "$n" "SET sql_log_bin = 0; CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'; GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;"
    done
    local_sql replica "CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = $PRIMARY, MASTER_USER = 'root',
      MASTER_USE_GTID = slave_pos; START SLAVE;"
    local_sql primary "CREATE DATABASE IF NOT EXISTS test"
  fi
  for _ in $(seq 60); do
    if [ "$(sql "$REPLICA" "SHOW REPLICA STATUS" 2>/dev/null | cut -f11,12 | tr '\t' ' ')" = "Yes Yes" ]; then
      echo "MariaDB primary on 127.0.0.1:$PRIMARY, replica on 127.0.0.1:$REPLICA ($DIR)"
      return 0
    fi
    sleep 0.5
  done
  echo "the replica on port $REPLICA is not replicating:" >&2
  sql "$REPLICA" "SHOW REPLICA STATUS\\G" >&2 || true
  return 1
}

stop() {
  local n
  for n in replica primary; do
    mariadbd_stop "$(node_dir "$n")"
  done
}

remove() {
  stop || true
  rm -rf "$DIR"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  remove) remove ;;
  status) for n in primary replica; do if running "$n"; then echo "$n running"; else echo "$n stopped"; fi; done ;;
  *) echo "usage: $0 start|stop|remove|status" >&2; exit 2 ;;
esac
