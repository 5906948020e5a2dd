# Starting and stopping a mariadbd of the clusters here; sourced by galera.sh and
# mariadb-replica.sh. Each server has a directory holding its my.cnf, data, socket,
# pid file and logs.

# Whether the server of directory $1 runs.
mariadbd_running() { [ -f "$1/mysqld.pid" ] && kill -0 "$(cat "$1/mysqld.pid")" 2>/dev/null; }

# Start the server of directory $1 in the background, with any further options.
mariadbd_launch() {
  local dir=$1
  shift
  (cd "$dir" && nohup mariadbd --defaults-file="$dir/my.cnf" "$@" >>"$dir/stdout.log" 2>&1 &)
}

# Stop the server of directory $1 (SIGTERM: a clean shutdown) and wait for it to end.
mariadbd_stop() {
  local pid
  if mariadbd_running "$1"; then
    pid=$(cat "$1/mysqld.pid")
    kill "$pid"
    for _ in $(seq 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  fi
}
