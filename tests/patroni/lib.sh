# Shared by tests/patroni/failover.sh and benches/patroni_failover.sh (sourced, not run): a Patroni
# member's configuration and the commands both drive it with.
#
# The caller sets PG_BIN, TTL, LOOP_WAIT, RETRY_TIMEOUT, the associative arrays PG_PORT and
# API_PORT (by member name), PATRONI_PID, and the array PIDS (every process it must stop), and
# PATRONI_DIR: the directory with the members' configurations (pg1.yml, pg2.yml), logs and `pg/`.

# Runs a command as the postgres user (in the foreground; see start_patroni).
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

# patroni_config SCOPE MEMBER HOSTS: writes $PATRONI_DIR/MEMBER.yml, a member of SCOPE whose DCS is
# the etcd v3 API at HOSTS (comma separated host:port).
patroni_config() {
    local scope=$1 m=$2 hosts=$3 dir=$PATRONI_DIR
    cat > "$dir/$m.yml" <<YAML
scope: $scope
name: $m
restapi: {listen: "127.0.0.1:${API_PORT[$m]}", connect_address: "127.0.0.1:${API_PORT[$m]}"}
etcd3: {hosts: "$hosts"}
bootstrap:
  dcs:
    ttl: $TTL
    loop_wait: $LOOP_WAIT
    retry_timeout: $RETRY_TIMEOUT
    maximum_lag_on_failover: 1048576
    postgresql: {use_pg_rewind: true, parameters: {wal_level: replica, hot_standby: "on", max_wal_senders: 5, max_replication_slots: 5}}
  initdb: [{encoding: UTF8}, {auth: trust}]
  pg_hba: ["local all all trust", "host replication replicator 127.0.0.1/32 trust", "host all all 127.0.0.1/32 trust"]
postgresql:
  listen: "127.0.0.1:${PG_PORT[$m]}"
  connect_address: "127.0.0.1:${PG_PORT[$m]}"
  data_dir: $dir/pg/data_$m
  bin_dir: $PG_BIN
  pgpass: $dir/pg/pgpass_$m
  authentication: {replication: {username: replicator, password: rep}, superuser: {username: postgres, password: pg}}
  parameters: {unix_socket_directories: $dir/pg}
YAML
}

# start_patroni MEMBER: Patroni for MEMBER in the background, its pid in PATRONI_PID and PIDS.
# setpriv is called directly, not through as_pg: a function in the background runs in a subshell,
# and $! would be the subshell's pid, so a SIGKILL "of Patroni" would miss it.
start_patroni() {
    setpriv --reuid=postgres --regid=postgres --init-groups /usr/bin/patroni "$PATRONI_DIR/$1.yml" >>"$PATRONI_DIR/$1.log" 2>&1 &
    PATRONI_PID[$1]=$!; PIDS+=($!)
}
ctl_list() { as_pg /usr/bin/patronictl -c "$PATRONI_DIR/pg1.yml" list 2>/dev/null; }
psql_at() { as_pg /usr/bin/psql -h 127.0.0.1 -p "${PG_PORT[$1]}" -U postgres -Atc "$2" 2>&1; }
# The member printed with role $1 in `patronictl list` (and state running).
member_with_role() { ctl_list | awk -F'|' -v r="$1" '{gsub(/ /,"",$2); gsub(/ /,"",$4); gsub(/ /,"",$5)} $4==r && $5=="running" {print $2}'; }
