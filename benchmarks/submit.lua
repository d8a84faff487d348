-- wrk script: every request submits one task (POST /api/v1/tasks).
-- wrk itself reports "Non-2xx or 3xx responses" when any submit is refused.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"type": "noop", "payload": {"n": 1}}'
