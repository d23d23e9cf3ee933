#!/usr/bin/env bash
# End-to-end on a real cluster (kind or k3d): build the image, install NATS
# with JetStream, KEDA, a Postgres and the Hookline chart, apply the Stripe
# example, wait for Ready, send a Stripe-signed event through a port-forward
# and find its row. Not part of CI (no cluster there).
#
#   e2e/cluster/run.sh            # uses the current kubectl context
#   KEEP=1 e2e/cluster/run.sh     # leave everything installed afterwards
#
# Prints why and exits 0 when no cluster is reachable.
set -euo pipefail
cd "$(dirname "$0")/../.."

say() { printf '==> %s\n' "$*"; }

for tool in kubectl helm docker openssl curl; do
  if ! command -v "$tool" >/dev/null; then
    echo "e2e/cluster: skipped: $tool is not installed"
    exit 0
  fi
done
if ! kubectl cluster-info --request-timeout=5s >/dev/null 2>&1; then
  echo "e2e/cluster: skipped: no Kubernetes cluster is reachable (kubectl cluster-info failed); start one with 'kind create cluster' or 'k3d cluster create'"
  exit 0
fi
context=$(kubectl config current-context)
say "cluster: $context"

image=hookline:e2e
say "building $image"
docker build -t "$image" .
case "$context" in
  kind-*) kind load docker-image "$image" --name "${context#kind-}" ;;
  k3d-*) k3d image import "$image" -c "${context#k3d-}" ;;
  *) echo "e2e/cluster: context $context is neither kind nor k3d: push $image where the cluster can pull it"; exit 1 ;;
esac

say "installing NATS (JetStream), KEDA and Postgres"
helm repo add nats https://nats-io.github.io/k8s/helm/charts/ >/dev/null
helm repo add kedacore https://kedacore.github.io/charts >/dev/null
helm repo update >/dev/null
helm upgrade --install nats nats/nats -n nats --create-namespace --wait \
  --set config.jetstream.enabled=true \
  --set config.jetstream.fileStore.pvc.size=1Gi \
  --set config.merge.max_payload=8388608
helm upgrade --install keda kedacore/keda -n keda --create-namespace --wait
kubectl create namespace payments --dry-run=client -o yaml | kubectl apply -f -
kubectl -n payments apply -f - <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata: {name: postgres}
spec:
  selector: {matchLabels: {app: postgres}}
  template:
    metadata: {labels: {app: postgres}}
    spec:
      containers:
        - name: postgres
          image: postgres:16
          env:
            - {name: POSTGRES_HOST_AUTH_METHOD, value: trust}
            - {name: POSTGRES_DB, value: hookline}
          ports: [{containerPort: 5432}]
          readinessProbe: {exec: {command: [pg_isready, -U, postgres]}, periodSeconds: 2}
---
apiVersion: v1
kind: Service
metadata: {name: postgres}
spec: {selector: {app: postgres}, ports: [{port: 5432}]}
EOF
kubectl -n payments rollout status deployment/postgres --timeout=180s

say "installing the Hookline chart"
helm upgrade --install hookline charts/hookline -n hookline --create-namespace --wait \
  --set image.repository=hookline --set image.tag=e2e --set image.pullPolicy=Never

secret=whsec_e2e_cluster_secret
kubectl -n payments create secret generic stripe-webhook --from-literal=secret="$secret" \
  --dry-run=client -o yaml | kubectl apply -f -
kubectl -n payments create secret generic hookline-postgres \
  --from-literal=url=postgres://postgres@postgres.payments.svc:5432/hookline \
  --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -f examples/stripe.yaml
say "waiting for the endpoint to be Ready"
kubectl -n payments wait --for=condition=Ready whe/stripe --timeout=300s
kubectl -n payments get whe stripe

say "sending a Stripe-signed event through a port-forward"
kubectl -n payments port-forward svc/stripe-receiver 18080:80 >/tmp/hookline-port-forward.log 2>&1 &
forward=$!
trap 'kill $forward 2>/dev/null || true' EXIT
sleep 3
ts=$(date +%s)
id="evt_cluster_$ts"
body="{\"id\":\"$id\",\"type\":\"invoice.paid\",\"created\":$ts,\"data\":{\"object\":{\"id\":\"in_cluster\"}}}"
sig=$(printf '%s' "$ts.$body" | openssl dgst -sha256 -hmac "$secret" -hex | sed 's/^.* //')
status=$(curl -s -o /tmp/hookline-answer.json -w '%{http_code}' -X POST http://127.0.0.1:18080/stripe \
  -H 'Content-Type: application/json' -H "Stripe-Signature: t=$ts,v1=$sig" --data "$body")
[ "$status" = 200 ] || { echo "e2e/cluster: the receiver answered $status: $(cat /tmp/hookline-answer.json)"; exit 1; }

say "finding the row"
for _ in $(seq 60); do
  rows=$(kubectl -n payments exec deploy/postgres -- psql -U postgres -d hookline -tAc \
    "SELECT count(*) FROM hookline.events WHERE event_id = '$id'" 2>/dev/null || echo 0)
  [ "$rows" = 1 ] && { say "passed: $id is in hookline.events"; break; }
  sleep 2
done
[ "${rows:-0}" = 1 ] || { echo "e2e/cluster: no row for $id"; exit 1; }

if [ -z "${KEEP:-}" ]; then
  say "cleaning up"
  kubectl delete -f examples/stripe.yaml --wait=true
  helm uninstall hookline -n hookline
fi
