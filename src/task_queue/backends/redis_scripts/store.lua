-- Store a transition Python computed (cancel, requeue) as a compare-and-set.
-- ARGV: [1] prefix, [2] id, [3] the rev the caller read, [4] a new rev, [5]
-- max_waiting ('' = unbounded), then the new task: [6] status, [7] rank, [8]
-- score (run_at when delayed, completed_at when final; lib.lua: whole
-- microseconds), [9] task JSON, [10] '1' when a cancel is asked, [11] progress
-- JSON ('' = none), [12] updated_at.
-- A running task stays running (a cancel request): only c and u are written,
-- its lease and d stay as they are. Any other write replaces d and deletes the
-- fields laid over it (rewrite in lib.lua).
-- Returns 'ok', 'gone' (no such task), 'stale' (written since the caller read
-- it: read again and recompute) or 'full'.
local id = ARGV[2]
local key = task_key(id)
local cur = redis.call('HMGET', key, 's', 'rev', 'q', 'r', 'seq')
if not cur[1] then
  return 'gone'
end
if (cur[2] or '0') ~= ARGV[3] then
  return 'stale'
end
local old, status = cur[1], ARGV[6]
if status == 'running' then
  redis.call('HSET', key, 'c', ARGV[10], 'u', ARGV[12], 'rev', ARGV[4])
  return 'ok'
end
local was_waiting = old == 'pending' or DELAYED[old]
if ARGV[5] ~= '' and (status == 'pending' or DELAYED[status]) and not was_waiting then
  if waiting_count() + 1 > tonumber(ARGV[5]) then
    return 'full'
  end
end
unindex(id, old, cur[3], cur[4], cur[5])
rewrite(key, ARGV[9], status, ARGV[7], ARGV[4])
if ARGV[11] == '' then
  redis.call('HDEL', key, 'p')
else
  redis.call('HSET', key, 'p', ARGV[11])
end
index(id, status, cur[3], ARGV[7], cur[5], ARGV[8])
if FINAL[status] then
  redis.call('PUBLISH', FINALS, id)
end
wake(ARGV[12], ARGV[4])
return 'ok'
