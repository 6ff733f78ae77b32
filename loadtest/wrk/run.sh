#!/usr/bin/env bash
# Quick informative run: issue path, /health/live and top products with wrk on this
# machine, against a serve started here on :8088 (stack must be up; BIN=target/release/flashcoupon
# for a release build). Prints wrk figures, RSS, and issued = persisted after the drain.
set -u
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/debug/flashcoupon}
export FLASHCOUPON__SERVER__PORT=8088 FLASHCOUPON__LIMITS__ENABLED=false FLASHCOUPON__LOG__FILTER=warn FLASHCOUPON__REDIS__KEY_PREFIX=bench: FLASHCOUPON__KAFKA__ISSUED_TOPIC=coupon.issued.v1.bench FLASHCOUPON__KAFKA__PERSISTER_GROUP=bench-$RANDOM
$BIN migrate >/dev/null
$BIN seed-demo
$BIN serve > /tmp/bench-serve.log 2>&1 &
PID=$!
sleep 3
TOKEN='Authorization: Bearer change-me-local-admin-token'
now=$(date -u +%Y-%m-%dT%H:%M:%SZ); end=$(date -u -d '+1 hour' +%Y-%m-%dT%H:%M:%SZ)
ID=$(curl -s -X POST -H "$TOKEN" -H 'content-type: application/json' http://127.0.0.1:8088/admin/v1/campaigns -d "{\"name\":\"bench\",\"total_quantity\":10000000,\"starts_at\":\"$now\",\"ends_at\":\"$end\",\"discount\":{\"kind\":\"percent\",\"value\":10},\"coupon_valid_days\":1}" | python3 -c 'import sys,json;print(json.load(sys.stdin)["id"])')
curl -s -X POST -H "$TOKEN" http://127.0.0.1:8088/admin/v1/catalog/refresh; echo
echo "== issue path, campaign $ID"
wrk -t2 -c300 -d20s -s loadtest/wrk/issue.lua http://127.0.0.1:8088 -- $ID | grep -vE "thread [0-9]: 201" 
echo "RSS after issue load: $(ps -o rss= -p $PID) kB"
echo "== /health/live"
wrk -t2 -c300 -d15s -s loadtest/wrk/get.lua http://127.0.0.1:8088/health/live
echo "== /api/v1/products/top"
wrk -t2 -c300 -d15s -s loadtest/wrk/get.lua 'http://127.0.0.1:8088/api/v1/products/top?limit=5&days=3'
sleep 5
curl -s -H "$TOKEN" http://127.0.0.1:8088/admin/v1/campaigns/$ID | python3 -c 'import sys,json;d=json.load(sys.stdin);print({k:d[k] for k in ("issued","persisted","pending_events")})'
kill -TERM $PID; wait $PID; echo "serve exit $?"
