#!/usr/bin/env bash
# demo.sh BUILD_DIR — what `make demo` runs once pgshard is built.
#
# Starts the lab from config/demo.ini in /tmp/pgshard-demo (two shards, each
# a primary and a streaming replica, all real PostgreSQL 15 servers, and the
# pgshard proxy; a directory the postgres OS user can reach when this runs as
# root), loads sql/demo through the proxy, runs sql/demo/workload.sql, shows
# which shard and server answered which statement (against the shard
# `pgshardctl route` names for its key), that every row is on the shard the
# map gives it and that each replica holds its primary's rows by streaming
# replication, and leaves everything running with the client URL printed.
#
# Safe to run again: the lab leaves running servers alone, the schema and the
# data are created only when missing, and the workload removes what it adds.
# `make demo-down` stops everything. A lab left by a demo with another shard
# map (rows on a shard this map does not give them) is reported, not changed.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

BUILD=${1:-build}
CONFIG=config/demo.ini
LAB_DIR=/tmp/pgshard-demo # the Makefile's demo-down stops the lab here
DEMO_DB=app               # [database.app]
DEMO_USER=app             # [user.app]
LAB_SUPERUSER=postgres    # every lab server has it, trusted on loopback
CTL=$BUILD/pgshardctl
SQL=sql/demo

export PGCONNECT_TIMEOUT=10
unset PGSERVICE PGOPTIONS PGHOST PGPORT PGUSER PGDATABASE PGPASSFILE 2>/dev/null || true

bold=
plain=
if [ -t 1 ]; then
  bold=$(printf '\033[1m')
  plain=$(printf '\033[0m')
fi

log_size() { stat -c %s "$LAB_DIR/pgshard.log" 2>/dev/null || echo 0; }
LOG_START=$(log_size)

step="starting"
heading() {
  step=$1
  printf '\n%s== %s%s\n' "$bold" "$1" "$plain"
}

die() {
  echo "demo: error: $*" >&2
  exit 1
}

on_error() {
  local rc=$? line=$1
  trap - ERR
  # In a command substitution only the shell that ran it reports.
  [ "$BASHPID" = "$$" ] || exit "$rc"
  {
    echo
    echo "demo: FAILED while ${step} (demo.sh line ${line}, exit status ${rc})."
    # Only what the proxy logged during this run.
    if [ "$(log_size)" -gt "$LOG_START" ]; then
      echo "demo: the proxy's log during this run ($LAB_DIR/pgshard.log), last lines:"
      tail -c +$((LOG_START + 1)) "$LAB_DIR/pgshard.log" | tail -n 15 | sed 's/^/    /'
    fi
    echo "demo: servers' logs are in $LAB_DIR/<port>/; 'make demo-down' stops what is running."
  } >&2
  exit "$rc"
}
trap 'on_error $LINENO' ERR

# ---- config/demo.ini, read the way pgshard reads it --------------------------

# ini_get SECTION KEY: every value KEY has in [SECTION], one a line, without
# inline "; comments".
ini_get() {
  awk -v want_section="$1" -v want_key="$2" '
    /^[ \t]*[;#]/ || /^[ \t]*$/ { next }
    /^[ \t]*\[/ {
      section = $0
      sub(/^[ \t]*\[/, "", section)
      sub(/\].*$/, "", section)
      next
    }
    section == want_section {
      eq = index($0, "=")
      if (!eq) next
      key = substr($0, 1, eq - 1)
      value = substr($0, eq + 1)
      gsub(/^[ \t]+|[ \t]+$/, "", key)
      sub(/[ \t]+;.*$/, "", value)
      gsub(/^[ \t]+|[ \t]+$/, "", value)
      if (key == want_key) print value
    }' "$CONFIG"
}

ini_first() { ini_get "$1" "$2" | sed -n 1p; }

# ini_sections PREFIX: section names starting with PREFIX, in file order.
ini_sections() {
  sed -n 's/^[ \t]*\[\([^]]*\)\].*$/\1/p' "$CONFIG" | awk -v p="$1" 'index($0, p) == 1 && !seen[$0]++'
}

# conninfo_get CONNINFO KEY DEFAULT
conninfo_get() {
  local value
  value=$(printf '%s\n' "$1" | tr '[:blank:]' '\n' | sed -n "s/^$2=//p" | sed -n 1p)
  printf '%s\n' "${value:-$3}"
}

# ---- preflight --------------------------------------------------------------

step="checking what the demo needs"
for program in pgshardctl pgshard; do
  [ -x "$BUILD/$program" ] ||
    die "$BUILD/$program is missing: run 'make demo' (it builds first), or build with 'cmake -S . -B $BUILD && cmake --build $BUILD'"
done
command -v psql >/dev/null ||
  die "psql not found: install postgresql-client-15 ('make demo' installs it)"
[ -r "$CONFIG" ] || die "$CONFIG not found"
for f in schema data workload; do
  [ -r "$SQL/$f.sql" ] || die "$SQL/$f.sql not found"
done
"$CTL" check "$CONFIG" >/dev/null || die "$CONFIG is not a valid config (see above)"

listen=$(ini_first pgshard listen)
listen=${listen:-127.0.0.1:6432}
PROXY_PORT=${listen##*:}
PROXY_HOST=${listen%:*}
PROXY_HOST=${PROXY_HOST#\[}
PROXY_HOST=${PROXY_HOST%\]}
case "$PROXY_HOST" in
  "" | "*" | 0.0.0.0) PROXY_HOST=127.0.0.1 ;;
  ::) PROXY_HOST=::1 ;;
esac
PASSWORD=$(ini_first "user.$DEMO_USER" password)
[ -n "$PASSWORD" ] || die "$CONFIG has no password for [user.$DEMO_USER]"
URL_HOST=$PROXY_HOST
case "$URL_HOST" in *:*) URL_HOST="[$URL_HOST]" ;; esac
CLIENT_URL="postgresql://$DEMO_USER:$PASSWORD@$URL_HOST:$PROXY_PORT/$DEMO_DB"

# Every server of the demo database: label, conninfo for a direct connection
# as the lab superuser, role.
NODE_LABEL=()
NODE_CONN=()
NODE_ADDR=()
NODE_ROLE=()
NODE_SHARD=()
SHARDS=()
declare -A LABEL_OF_PORT=() SHARD_OF_PORT=()
add_node() { # LABEL CONNINFO ROLE SHARD
  local host port conn=$2
  host=$(conninfo_get "$2" host 127.0.0.1)
  port=$(conninfo_get "$2" port 5432)
  [[ $conn =~ (^|[[:space:]])dbname= ]] || conn+=" dbname=$DEMO_DB"
  NODE_LABEL+=("$1")
  NODE_CONN+=("$conn user=$LAB_SUPERUSER")
  NODE_ADDR+=("$host:$port")
  NODE_ROLE+=("$3")
  NODE_SHARD+=("$4")
  LABEL_OF_PORT[$port]=$1
  SHARD_OF_PORT[$port]=$4
}
while read -r section; do
  shard=${section#"shard.$DEMO_DB."}
  SHARDS+=("$shard")
  primary=$(ini_first "$section" primary)
  [ -n "$primary" ] && add_node "$DEMO_DB.$shard primary" "$primary" primary "$shard"
  i=0
  while read -r replica; do
    [ -n "$replica" ] || continue
    add_node "$DEMO_DB.$shard replica $i" "$replica" replica "$shard"
    i=$((i + 1))
  done < <(ini_get "$section" replica)
done < <(ini_sections "shard.$DEMO_DB.")
[ "${#NODE_LABEL[@]}" -gt 0 ] || die "$CONFIG has no [shard.$DEMO_DB.*] section"

# The sharded tables of the demo database ([table.DB.T]) and their keys;
# every other table is a reference table.
SHARDED_TABLE=()
SHARDED_COLUMN=()
while read -r section; do
  SHARDED_TABLE+=("${section#"table.$DEMO_DB."}")
  SHARDED_COLUMN+=("$(ini_first "$section" column)")
done < <(ini_sections "table.$DEMO_DB.")

# through the proxy, as the demo's client
proxy_psql() {
  PGPASSWORD=$PASSWORD psql -X -v ON_ERROR_STOP=1 \
    "host=$PROXY_HOST port=$PROXY_PORT dbname=$DEMO_DB user=$DEMO_USER application_name=pgshard-demo" "$@"
}
# straight to one server (index into NODE_*), as the lab superuser
node_psql() {
  local n=$1
  shift
  psql -X -v ON_ERROR_STOP=1 "${NODE_CONN[$n]} application_name=pgshard-demo" "$@"
}

printf '%spgshard demo%s: %s (%d servers behind one proxy), lab in %s\n' \
  "$bold" "$plain" "$CONFIG" "${#NODE_LABEL[@]}" "$LAB_DIR"

# placement: for every primary and sharded table, "LABEL|TABLE|ROWS|MISPLACED":
# the rows the primary holds and how many of them have a key that
# `pgshardctl route` puts on another shard. Tables not created yet are left
# out.
placement() {
  local n t table col rows
  for n in "${!NODE_LABEL[@]}"; do
    [ "${NODE_ROLE[$n]}" = primary ] || continue
    for t in "${!SHARDED_TABLE[@]}"; do
      table=${SHARDED_TABLE[$t]}
      col=${SHARDED_COLUMN[$t]}
      [ "$(node_psql "$n" -qAt -c "SELECT to_regclass('public.\"$table\"') IS NOT NULL")" = t ] || continue
      # key <TAB> its rows, beside key <TAB> the shard route names for it
      rows=$(node_psql "$n" -qAt -F $'\t' -c "SELECT \"$col\", count(*) FROM \"$table\" GROUP BY 1 ORDER BY 1")
      if [ -z "$rows" ]; then
        echo "${NODE_LABEL[$n]}|$table|0|0"
        continue
      fi
      paste <(printf '%s\n' "$rows") \
        <(printf '%s\n' "$rows" | cut -f1 | "$CTL" route --stdin "$CONFIG" "$DEMO_DB" "$table") |
        awk -F'\t' -v shard="${NODE_SHARD[$n]}" -v prefix="${NODE_LABEL[$n]}|$table" '
          { rows += $2; if ($4 != shard) misplaced += $2 }
          END { printf "%s|%d|%d\n", prefix, rows, misplaced }'
    done
  done
}

# ---- the lab ----------------------------------------------------------------

heading "starting the lab: pgshardctl lab up -c $CONFIG --dir $LAB_DIR"
"$CTL" lab up -c "$CONFIG" --dir "$LAB_DIR"

step="waiting for the proxy at $PROXY_HOST:$PROXY_PORT"
for attempt in $(seq 1 20); do
  if proxy_psql -qAt -c 'SELECT 1' >/dev/null 2>&1; then break; fi
  if [ "$attempt" = 20 ]; then
    proxy_psql -qAt -c 'SELECT 1' # one more time, with its error shown
  fi
  sleep 0.5
done

# ---- schema, data, workload through the proxy --------------------------------

# Rows that a demo with another shard map (such as the earlier one-shard
# demo) left on a shard this map does not give them would be read twice or
# never: say so rather than load on top of them.
step="checking the lab's rows against the shard map"
placement_now=$(placement)
stale=$(awk -F'|' '$4 > 0 { printf "%s%s: %d of %d %s rows", sep, $1, $4, $3, $2; sep = "; " }' <<<"$placement_now")
if [ -n "$stale" ]; then
  die "$LAB_DIR holds rows on a shard that $CONFIG does not give them ($stale), left by a demo with another shard map. Start afresh: $CTL lab down -c $CONFIG --dir $LAB_DIR --purge && make demo"
fi

heading "loading $SQL/schema.sql and $SQL/data.sql through pgshard ($PROXY_HOST:$PROXY_PORT)"
proxy_psql -q -f "$SQL/schema.sql"
echo "schema: tables countries, users, orders (created if missing; DDL goes to every shard)"
load_start=$(date +%s%N)
# data.sql sends one statement a row or user: show each run of equal tags once
proxy_psql -f "$SQL/data.sql" |
  awk 'NR > 1 && $0 != prev { printf "%6d x %s\n", n, prev; n = 0 } { prev = $0; n++ }
       END { if (NR) printf "%6d x %s\n", n, prev }' | sed 's/^/data: /'
load_ms=$((($(date +%s%N) - load_start) / 1000000))
printf '%s\n' \
  "      countries: one INSERT, written on every shard (a reference table); users:" \
  "      one INSERT per user, to the shard of its id; orders: one INSERT per user" \
  "      with its 4 orders, to that user's shard. INSERT 0 0 on a second run: the" \
  "      rows are already there. Loaded in $((load_ms / 1000)).$(printf '%03d' $((load_ms % 1000))) s."

heading "running $SQL/workload.sql through pgshard (the errors near the end are expected)"
# stderr too, so that the expected refusals show among the results
proxy_psql -q -f "$SQL/workload.sql" 2>&1

# ---- where statements went --------------------------------------------------

heading "where statements went: each one asks the server that ran it"
# Users on both shards (with config/demo.ini, 42 and 999 are on s0, 7 and 1
# on s1), and the shard `pgshardctl route` names for each.
PROBE_KEYS=(42 7 999 1)
declare -A SHARD_OF_KEY=()
while IFS=$'\t' read -r key shard; do
  SHARD_OF_KEY[$key]=$shard
done < <(printf '%s\n' "${PROBE_KEYS[@]}" | "$CTL" route --stdin "$CONFIG" "$DEMO_DB" users)
# Each statement returns: what it is | where it should go (a shard, "one":
# any one shard, "every": each shard once) | port | in recovery. Separate
# statements, and under transaction pooling separate server checkouts.
probes=""
for key in "${PROBE_KEYS[@]}"; do
  want=${SHARD_OF_KEY[$key]}
  probes+="SELECT 'SELECT ... FROM users WHERE id = $key', '$want', inet_server_port(), pg_is_in_recovery() FROM users WHERE id = $key;
UPDATE users SET name = name WHERE id = $key
  RETURNING 'UPDATE users ... WHERE id = $key', '$want', inet_server_port(), pg_is_in_recovery();
SELECT 'SELECT ... FROM orders WHERE user_id = $key', '$want', inet_server_port(), pg_is_in_recovery() FROM orders WHERE user_id = $key LIMIT 1;
"
done
for shard in "${SHARDS[@]}"; do
  probes+="/* pgshard: shard=$shard */ SELECT '/* pgshard: shard=$shard */ SELECT ... FROM users', '$shard', inet_server_port(), pg_is_in_recovery() FROM users LIMIT 1;
"
done
probes+="SET pgshard.shard = '${SHARDS[0]}';
SELECT 'SET pgshard.shard = ''${SHARDS[0]}''; SELECT ... FROM orders', '${SHARDS[0]}', inet_server_port(), pg_is_in_recovery() FROM orders LIMIT 1;
RESET pgshard.shard;
SELECT 'SELECT with no table', 'one', inet_server_port(), pg_is_in_recovery();
SELECT 'SELECT ... FROM countries (reference)', 'one', inet_server_port(), pg_is_in_recovery() FROM countries LIMIT 1;
UPDATE countries SET name = name WHERE code = 'DE'
  RETURNING 'UPDATE countries (reference table)', 'every', inet_server_port(), pg_is_in_recovery();
"
routes=$(proxy_psql -qAt -F '|' <<<"$probes")
printf '  %-50s %-11s %s\n' STATEMENT 'SHOULD RUN' 'RAN ON'
on_replica=0
wrong=()
while IFS='|' read -r what want port recovery; do
  [ -n "$what" ] || continue
  [ "$recovery" = t ] && on_replica=$((on_replica + 1))
  got=${SHARD_OF_PORT[$port]:-}
  case "$want" in
    one) want_text="on a shard" ;;
    every) want_text="every shard" ;;
    *) want_text="on $want" ;;
  esac
  if [ -z "$got" ] || { [ "$want" != one ] && [ "$want" != every ] && [ "$want" != "$got" ]; }; then
    wrong+=("$what: should run $want_text, ran on port $port")
  fi
  printf '  %-50s %-11s port %-5s %s\n' "$what" "$want_text" "$port" \
    "(${LABEL_OF_PORT[$port]:-not in $CONFIG}, in recovery: $([ "$recovery" = t ] && echo yes || echo no))"
done <<<"$routes"
# A write to a reference table runs on every shard; its RETURNING rows come
# back once (the copies are the same rows), so the port shows one of them.
for n in "${!NODE_LABEL[@]}"; do
  [ "${NODE_ROLE[$n]}" = primary ] || continue
  c=$(node_psql "$n" -qAt -c "SELECT count(*) FROM countries WHERE code = 'DE'")
  [ "$c" = 1 ] || wrong+=("countries has no 'DE' row on ${NODE_LABEL[$n]}")
done
[ "${#wrong[@]}" = 0 ] || die "statements went to the wrong shard: $(printf '%s; ' "${wrong[@]}")"
echo "  Each keyed statement ran on the shard 'pgshardctl route $CONFIG $DEMO_DB TABLE KEY' names."
echo "  $on_replica reads ran on replicas (within max_replica_lag_*); writes, and reads a"
echo "  session must see its own writes in (read_your_writes = lsn), ran on primaries."

# ---- every row on its shard -------------------------------------------------

heading "every row on the shard the map gives it (keys checked with pgshardctl route --stdin)"
step="checking the rows against the shard map"
placement_now=$(placement)
printf '  %-18s %-8s %6s %10s\n' NODE TABLE ROWS MISPLACED
misplaced=0
while IFS='|' read -r label table rows bad; do
  printf '  %-18s %-8s %6s %10s\n' "$label" "$table" "$rows" "$bad"
  misplaced=$((misplaced + bad))
done <<<"$placement_now"
[ "$misplaced" = 0 ] || die "$misplaced rows are on a shard the map in $CONFIG does not give them"
awk -F'|' '{ total[$2] += $3; per[$2] = per[$2] sep[$2] $3; sep[$2] = " + " }
  END { for (t in total) printf "  %s: %s = %d rows in all, each on one shard only\n", t, per[t], total[t] }' \
  <<<"$placement_now" | sort

# ---- the replicas have the data ---------------------------------------------

heading "each replica has its primary's rows, asked directly (user $LAB_SUPERUSER, not through pgshard)"
primary_lsn=""
for n in "${!NODE_LABEL[@]}"; do
  if [ "${NODE_ROLE[$n]}" = primary ]; then
    step="asking ${NODE_LABEL[$n]} (${NODE_ADDR[$n]}) for its WAL position"
    primary_lsn=$(node_psql "$n" -qAt -c 'SELECT pg_current_wal_lsn()')
  else
    # Wait until the replica has replayed everything the demo wrote.
    step="waiting for ${NODE_LABEL[$n]} (${NODE_ADDR[$n]}) to replay up to $primary_lsn"
    for attempt in $(seq 1 60); do
      caught_up=$(node_psql "$n" -qAt -c "SELECT pg_last_wal_replay_lsn() >= '$primary_lsn'::pg_lsn")
      [ "$caught_up" = t ] && break
      [ "$attempt" = 60 ] && die "${NODE_LABEL[$n]} has not replayed the demo's writes within 30 s; '$CTL lab status -c $CONFIG --dir $LAB_DIR' shows why (replay paused by 'lab lag'? resume it with '$CTL lab lag -c $CONFIG --dir $LAB_DIR $DEMO_DB.SHARD N resume')"
      sleep 0.5
    done
  fi
done
printf '  %-18s %-16s %-11s %7s %7s %9s\n' NODE ADDRESS RECOVERY users orders countries
declare -A PRIMARY_ROWS=()
for n in "${!NODE_LABEL[@]}"; do
  step="counting rows on ${NODE_LABEL[$n]} (${NODE_ADDR[$n]})"
  IFS='|' read -r recovery users orders countries < <(node_psql "$n" -qAt -F '|' -c \
    'SELECT pg_is_in_recovery(), (SELECT count(*) FROM users), (SELECT count(*) FROM orders), (SELECT count(*) FROM countries)')
  printf '  %-18s %-16s %-11s %7s %7s %9s\n' "${NODE_LABEL[$n]}" "${NODE_ADDR[$n]}" \
    "$([ "$recovery" = t ] && echo "yes" || echo "no")" "$users" "$orders" "$countries"
  if [ "${NODE_ROLE[$n]}" = primary ]; then
    PRIMARY_ROWS[${NODE_SHARD[$n]}]="$users $orders $countries"
  elif [ "${PRIMARY_ROWS[${NODE_SHARD[$n]}]:-}" != "$users $orders $countries" ]; then
    die "${NODE_LABEL[$n]} has $users users, $orders orders, $countries countries; its primary ${PRIMARY_ROWS[${NODE_SHARD[$n]}]:-(not counted)}"
  fi
done
for n in "${!NODE_LABEL[@]}"; do
  [ "${NODE_ROLE[$n]}" = primary ] || continue
  step="reading pg_stat_replication on ${NODE_LABEL[$n]}"
  node_psql "$n" -qAt -F '|' -c \
    "SELECT client_addr, state, sync_state, pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)
       FROM pg_stat_replication ORDER BY client_port" |
    while IFS='|' read -r addr state sync lag; do
      echo "  ${NODE_LABEL[$n]} streams to a standby from $addr: $state ($sync), replay $lag bytes behind"
    done
done
echo "  Each replica holds its own primary's rows, no other shard's: the replicas"
echo "  were never written to, every row reached them by streaming replication."

# ---- status and how to use it -----------------------------------------------

heading "pgshardctl lab status -c $CONFIG --dir $LAB_DIR"
"$CTL" lab status -c "$CONFIG" --dir "$LAB_DIR"

step="finishing"
cat <<EOF

${bold}The demo is running.${plain} Connect your application or psql to pgshard:
  $CLIENT_URL
  psql '$CLIENT_URL'
Proxy log:  $LAB_DIR/pgshard.log
Stop it:    make demo-down   (or: $CTL lab down -c $CONFIG --dir $LAB_DIR [--purge])
EOF
