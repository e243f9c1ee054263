#!/usr/bin/env bash
# Regenerates docs/img/flower-sqs.png: two NanoGrid workers and Flower on the SQS broker (a local
# moto server, with SNS fanout), six tasks sent with `celery call`, captured by headless Chromium.
# Needs the test setup (./scripts/test creates .venv) and Debian's chromium and redis-server.
set -euo pipefail
cd "$(dirname "$0")/.."
V="$PWD/.venv/bin"
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=ap-northeast-2 AWS_DEFAULT_REGION=ap-northeast-2
"$V/python" -m moto.server -H 127.0.0.1 -p 5055 >"$work/moto.log" 2>&1 & pids+=($!)
redis-server --port 6399 --save "" --appendonly no >"$work/redis.log" 2>&1 & pids+=($!)
sleep 2
export AWS_ENDPOINT_URL=http://127.0.0.1:5055
SQS_QUEUE_URL=$("$V/python" -c "import boto3; print(boto3.client('sqs').create_queue(QueueName='nanogrid-task-queue')['QueueUrl'])")
export SQS_QUEUE_URL REDIS_HOST=127.0.0.1 REDIS_PORT=6399 NANOGRID_SANDBOX=process NANOGRID_DATA_DIR="$work/data"
"$V/python" -m celery -A nanogrid worker -n worker-a@%h >"$work/a.log" 2>&1 & pids+=($!)
"$V/python" -m celery -A nanogrid worker -n worker-b@%h >"$work/b.log" 2>&1 & pids+=($!)
FLOWER_UNAUTHENTICATED_API=true "$V/python" -m celery -A nanogrid flower --port=5566 --address=127.0.0.1 \
  >"$work/flower.log" 2>&1 & pids+=($!)
# Tasks are shown only once Flower has turned task events on in both workers (every 5 s).
until "$V/python" -m celery -A nanogrid inspect task_events --json 2>/dev/null \
    | "$V/python" -c 'import json, sys; r = json.loads(sys.stdin.read().splitlines()[-1]); sys.exit(not (len(r) == 2 and all(v["task_events"] for v in r.values())))'; do
  sleep 1
done
for i in 1 2 3 4 5 6; do
  "$V/python" -m celery -A nanogrid call nanogrid.run_job --args "[\"00000000-0000-4000-8000-00000000000$i\"]" >/dev/null
done
sleep 8
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$work/chrome" --window-size=1400,700 \
  --screenshot="$PWD/docs/img/flower-sqs.png" http://127.0.0.1:5566/
