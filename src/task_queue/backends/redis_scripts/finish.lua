-- Store workers' outcomes for tasks they hold the lease on, many in one call,
-- applying Task.settled_over (task.py, the single definition of the rule):
--   * a cancel asked while the task ran (stored c = 1) turns an outcome that is
--     not final into the cancelled variant Python sends along;
--   * progress is written only when the outcome carries a value, so a stored
--     progress stays otherwise.
-- ARGV: [1] prefix, then per outcome: id, lease token that must still hold the
-- lease, which of the optional parts follow ('', 'v', 'p' or 'vp'), status,
-- rank, score (run_at when delayed, completed_at when final; lib.lua: whole
-- microseconds), task JSON; then with 'v' the same four for the cancelled
-- variant (a final outcome has none), with 'p' its progress JSON (without, the
-- stored progress stays). Returns one 1 (stored) or 0 (the token lost the
-- lease) per outcome.
local answers = {}
local settled, finals = {}, {completed = {}, failed = {}, cancelled = {}}
local ended = {}  -- the ids made final, for the waits that hear of them (lib.lua's FINALS)
local VARIANT = {v = true, vp = true}
local PROGRESS = {p = true, vp = true}
local at = 2
while at <= #ARGV do
  local id, token, parts = ARGV[at], ARGV[at + 1], ARGV[at + 2]
  local from, variant, progress = at + 3, nil, nil
  at = at + 7
  if VARIANT[parts] then
    variant, at = at, at + 4
  end
  if PROGRESS[parts] then
    progress, at = ARGV[at], at + 1
  end
  local key = task_key(id)
  local cur = redis.call('HMGET', key, 'l', 'c', 'q', 'seq')
  if cur[1] ~= token then
    answers[#answers + 1] = 0
  else
    if cur[2] == '1' and variant and not FINAL[ARGV[from]] then
      from = variant
    end
    local status, rank, score = ARGV[from], ARGV[from + 1], ARGV[from + 2]
    rewrite(key, ARGV[from + 3], status, rank, token .. '.')
    if progress then
      redis.call('HSET', key, 'p', progress)
    end
    settled[#settled + 1] = id
    if FINAL[status] then
      local members = finals[status]
      members[#members + 1] = score
      members[#members + 1] = id
      ended[#ended + 1] = id
    else
      index(id, status, cur[3], rank, cur[4], score)
    end
    answers[#answers + 1] = 1
  end
end
if #settled > 0 then
  each_chunk('ZREM', P .. 'leased', settled, 1)
end
for status, members in pairs(finals) do
  if #members > 0 then
    each_chunk('ZADD', P .. 'final:' .. status, members, 2)
  end
end
if #ended > 0 then
  redis.call('PUBLISH', FINALS, table.concat(ended, '\n'))
end
-- Only a worker's outcome completes or fails a task (a store never does), so
-- processed and failed are counted here alone; cancelled counts in neither.
local failed = #finals.failed / 2
local processed = #finals.completed / 2 + failed
if processed > 0 then
  redis.call('HINCRBY', COUNTS, 'processed', processed)
end
if failed > 0 then
  redis.call('HINCRBY', COUNTS, 'failed', failed)
end
wake()
return answers
