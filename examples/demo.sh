#!/usr/bin/env bash
# Submit one task of every built-in type plus a high-priority one, wait for each
# to finish, print a summary table, and exit 1 unless every task completed.
# The URL-fetching types use a local peer this script starts, so the server
# must run with ALLOW_PRIVATE_URLS=true.
#
#   examples/demo.sh                                  # against `ALLOW_PRIVATE_URLS=true make run`
#   TASK_QUEUE_URL=http://localhost:9000 examples/demo.sh
#
# Needs curl and python3 (for JSON); jq is not required.
set -euo pipefail

URL="${TASK_QUEUE_URL:-http://localhost:8080}"
API="${URL%/}/api/v1"
WAIT_SECONDS=30   # per long-poll (the server caps it at 60)
MAX_POLLS=4       # give up on a task after this many long-polls

# The local peers the URL-fetching types talk to: an image, a CSV file and a
# webhook receiver, served by a throwaway HTTP server on a free loopback port.
# The task-queue server must allow that: ALLOW_PRIVATE_URLS=true make run
peer_port_file="$(mktemp)"
python3 - "$peer_port_file" <<'PEER' &
import base64, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAEAAAAAwCAIAAAAuKetIAAAASUlEQVR42u3RAQ0AMAgEMZia968CWZOxkPUc"
    "NNfJ1OZOLQ8AAAAAAAAAAAAAAAAAAADgTT2JAwAAAAAAAAAAAAAAAAAAAAD/AS45VgKPzXHPKgAAAABJRU5ErkJggg=="
)
CSV = b"region,status,amount\nnorth,paid,120.5\nsouth,paid,80\nnorth,open,30\nsouth,paid,19.5\n"


class Peer(BaseHTTPRequestHandler):
    def do_GET(self):
        body, kind = {"/picture.png": (PNG, "image/png"), "/orders.csv": (CSV, "text/csv")}.get(
            self.path, (b"not found", "text/plain"))
        self.send_response(200 if body != b"not found" else 404)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Peer)
with open(sys.argv[1], "w") as port_file:
    port_file.write(str(server.server_address[1]))
server.serve_forever()
PEER
peer_pid=$!
trap 'kill "$peer_pid" 2>/dev/null; rm -f "$peer_port_file"' EXIT
for _ in $(seq 50); do [[ -s "$peer_port_file" ]] && break; sleep 0.1; done
PEER_URL="http://127.0.0.1:$(cat "$peer_port_file")"

# One line per task: type|priority|payload.
TASKS=(
  'email|0|{"recipient": "ada@example.com", "subject": "Hello from demo.sh", "body": "One task of the email type."}'
  'email|10|{"to": ["grace@example.com"], "subject": "Urgent", "body": "Priority 10 runs before priority 0."}'
  "webhook|0|{\"url\": \"$PEER_URL/hook\", \"body\": {\"event\": \"demo\"}, \"secret\": \"s3cret\"}"
  "image_resize|0|{\"image_url\": \"$PEER_URL/picture.png\", \"width\": 32, \"height\": 32, \"mode\": \"fill\", \"format\": \"webp\"}"
  "data_processing|0|{\"csv_url\": \"$PEER_URL/orders.csv\", \"operations\": [{\"type\": \"filter\", \"column\": \"status\", \"op\": \"eq\", \"value\": \"paid\"}, {\"type\": \"aggregate\", \"group_by\": [\"region\"], \"aggregations\": [{\"column\": \"amount\", \"function\": \"sum\", \"as\": \"revenue\"}]}]}"
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
  echo "(webhook, image_resize and data_processing reach the demo's local peer:" \
    "start the server with ALLOW_PRIVATE_URLS=true)" >&2
  exit 1
fi
echo "all ${#ids[@]} tasks completed"
