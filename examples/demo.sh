#!/usr/bin/env bash
# Submit one task of every built-in type plus a high-priority one, wait for each
# to finish, print a summary table, and exit 1 unless every task completed.
#
#   examples/demo.sh                                  # against `make run`
#   TASK_QUEUE_URL=http://localhost:9000 examples/demo.sh
#
# Needs curl and python3 (for JSON); jq is not required.
set -euo pipefail

URL="${TASK_QUEUE_URL:-http://localhost:8080}"
API="${URL%/}/api/v1"
WAIT_SECONDS=30   # per long-poll (the server caps it at 60)
MAX_POLLS=4       # give up on a task after this many long-polls

# One line per task: type|priority|payload. When a built-in type ships
# (image_resize, data_processing, webhook), add one line for it here.
TASKS=(
  'email|0|{"recipient": "ada@example.com", "subject": "Hello from demo.sh", "body": "One task of the email type."}'
  'email|10|{"to": ["grace@example.com"], "subject": "Urgent", "body": "Priority 10 runs before priority 0."}'
)

json_get() {  # json_get FIELD < json: print one top-level field
  python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"
}

request() {  # request METHOD URL [BODY]: print the body, fail unless the status is 2xx
  local out status
  out="$(mktemp)"
  status="$(curl -sS -o "$out" -w '%{http_code}' -X "$1" -H 'Content-Type: application/json' \
    ${3:+--data-binary "$3"} --max-time $((WAIT_SECONDS + 10)) "$2")" || {
    rm -f "$out"
    echo "demo.sh: cannot reach $URL (is the server running? try: make run)" >&2
    exit 2
  }
  if [[ "$status" != 2* ]]; then
    echo "demo.sh: $1 $2 answered $status: $(cat "$out")" >&2
    rm -f "$out"
    exit 2
  fi
  cat "$out"
  rm -f "$out"
}

ids=()
for line in "${TASKS[@]}"; do
  IFS='|' read -r type priority payload <<<"$line"
  body="$(python3 -c 'import json, sys
print(json.dumps({"type": sys.argv[1], "priority": int(sys.argv[2]), "payload": json.loads(sys.argv[3])}))' \
    "$type" "$priority" "$payload")"
  response="$(request POST "$API/tasks" "$body")"
  id="$(json_get id <<<"$response")"
  echo "submitted $type (priority $priority): $id"
  ids+=("$id")
done

rows=()
failures=0
for id in "${ids[@]}"; do
  for ((poll = 1; poll <= MAX_POLLS; poll++)); do
    task="$(request GET "$API/tasks/$id?wait=$WAIT_SECONDS")"
    status="$(json_get status <<<"$task")"
    case "$status" in completed | failed | cancelled) break ;; esac
  done
  rows+=("$(python3 -c 'import json, sys
t = json.load(sys.stdin)
print("\t".join(str(t[k]) for k in ("id", "type", "priority", "status", "attempts")))' <<<"$task")")
  [[ "$status" == completed ]] || failures=$((failures + 1))
done

echo
printf '%-36s  %-16s  %8s  %-10s  %8s\n' ID TYPE PRIORITY STATUS ATTEMPTS
for row in "${rows[@]}"; do
  IFS=$'\t' read -r id type priority status attempts <<<"$row"
  printf '%-36s  %-16s  %8s  %-10s  %8s\n' "$id" "$type" "$priority" "$status" "$attempts"
done
echo

if ((failures > 0)); then
  echo "$failures of ${#ids[@]} tasks did not complete" >&2
  exit 1
fi
echo "all ${#ids[@]} tasks completed"
