#!/usr/bin/env bash
# Runs a whole Hookline pipeline on this machine, outside Kubernetes, from the same
# manifest a cluster takes (examples/stripe.yaml):
#   nats-server (JetStream) + Postgres in ./.hookline, the receiver and the consumer
#   with --provision, a few Stripe-signed sample events, the rows they became;
#   then it keeps serving and prints a ready-to-paste signed curl line. Ctrl-C stops all.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
state=${HOOKLINE_STATE_DIR:-$root/.hookline}
receiver_port=${RECEIVER_PORT:-8080}
consumer_port=${CONSUMER_PORT:-8081}
nats_port=${NATS_PORT:-4222}
pg_port=${PG_PORT:-54329}
manifest=$root/examples/stripe.yaml
secret=whsec_quickstart_$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# 1. What is missing gets installed (Debian/Ubuntu).
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
missing=()
command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
[ -n "$pg_bin" ] || command -v initdb >/dev/null || missing+=(postgresql)
command -v psql >/dev/null || missing+=(postgresql-client)
command -v curl >/dev/null || missing+=(curl)
command -v openssl >/dev/null || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
fi
export PATH="$PATH:/usr/sbin:${pg_bin:-/usr/bin}"

say "building (release)"
cargo build --release --quiet --workspace --bins
bin=$root/target/release

mkdir -p "$state"
pids=()
cleanup() {
  say "stopping"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -f "$state/pg/postmaster.pid" ]; then pg pg_ctl -D "$state/pg" -m fast -w stop >/dev/null || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Postgres refuses to run as root: run it as the postgres user then.
pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
wait_for() { for _ in $(seq 1 100); do if eval "$1" >/dev/null 2>&1; then return 0; fi; sleep 0.2; done; echo "timed out waiting for: $1" >&2; exit 1; }

say "starting nats-server with JetStream on :$nats_port (store $state/nats)"
nats-server -js -sd "$state/nats" -a 127.0.0.1 -p "$nats_port" -m $((nats_port + 4000)) >"$state/nats.log" 2>&1 &
pids+=($!)
wait_for "curl -sf http://127.0.0.1:$((nats_port + 4000))/healthz"

say "starting Postgres on :$pg_port (data $state/pg)"
if [ "$(id -u)" = 0 ]; then chown postgres "$state"; chmod 755 "$state"; fi
[ -f "$state/pg/PG_VERSION" ] || pg initdb -D "$state/pg" -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
pg pg_ctl -D "$state/pg" -l "$state/pg.log" -o "-p $pg_port -k $state -c listen_addresses=127.0.0.1" -w start >/dev/null
database_url=postgres://postgres@127.0.0.1:$pg_port/postgres

printf '%s\n' "$secret" >"$state/stripe-secret"
say "starting hookline-receiver on :$receiver_port and hookline-consumer on :$consumer_port"
"$bin/hookline-receiver" --endpoint "$manifest" --secret-file "$state/stripe-secret" \
  --nats-url "nats://127.0.0.1:$nats_port" --listen "127.0.0.1:$receiver_port" --provision >"$state/receiver.log" 2>&1 &
pids+=($!)
"$bin/hookline-consumer" --endpoint "$manifest" --nats-url "nats://127.0.0.1:$nats_port" \
  --database-url "$database_url" --listen "127.0.0.1:$consumer_port" --provision >"$state/consumer.log" 2>&1 &
pids+=($!)
wait_for "curl -sf http://127.0.0.1:$receiver_port/readyz"
wait_for "curl -sf http://127.0.0.1:$consumer_port/readyz"

url=http://127.0.0.1:$receiver_port/stripe
sign() { printf '%s.%s' "$1" "$2" | openssl dgst -sha256 -hmac "$secret" -r | cut -d' ' -f1; }
send() {
  local body=$1 t
  t=$(date +%s)
  printf '%-24s -> ' "$(printf '%s' "$body" | sed -E 's/.*"type":"([^"]+)".*/\1/')"
  curl -s -w ' (HTTP %{http_code})\n' -X POST "$url" -H 'Content-Type: application/json' \
    -H "Stripe-Signature: t=$t,v1=$(sign "$t" "$body")" --data-binary "$body"
}

say "sending Stripe-signed sample events (the paid event first, out of order, and one twice)"
now=$(date +%s)
send '{"id":"evt_qs_'$now'_2","type":"invoice.paid","created":'$((now))',"data":{"object":{"id":"in_qs_'$now'","status":"paid"}}}'
send '{"id":"evt_qs_'$now'_1","type":"invoice.created","created":'$((now - 60))',"data":{"object":{"id":"in_qs_'$now'","status":"draft"}}}'
send '{"id":"evt_qs_'$now'_2","type":"invoice.paid","created":'$((now))',"data":{"object":{"id":"in_qs_'$now'","status":"paid"}}}'
printf 'forged                   -> '
curl -s -w ' (HTTP %{http_code})\n' -X POST "$url" -H 'Content-Type: application/json' \
  -H "Stripe-Signature: t=$now,v1=$(printf '%064d' 0)" --data-binary '{"id":"evt_forged","type":"x"}'

sleep 2
say "rows in Postgres"
psql -X -h 127.0.0.1 -p "$pg_port" -U postgres -c \
  "select endpoint, event_id, event_type, event_timestamp, object_id from hookline.events order by event_timestamp"
psql -X -h 127.0.0.1 -p "$pg_port" -U postgres -c \
  "select object_id, last_event_id, state->>'status' as status from hookline.objects"

body='{"id":"evt_curl_'$now'","type":"customer.created","created":'$now',"data":{"object":{"id":"cus_1"}}}'
t=$now
say "serving at $url — send your own signed event (valid for 5 minutes):"
printf "curl -X POST %s -H 'Content-Type: application/json' -H 'Stripe-Signature: t=%s,v1=%s' --data-binary '%s'\n" \
  "$url" "$t" "$(sign "$t" "$body")" "$body"
echo "logs: $state/*.log — metrics: http://127.0.0.1:$receiver_port/metrics — Ctrl-C stops everything"
wait "${pids[1]}"
