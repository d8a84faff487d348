-- Store new tasks for several submitters in one call; each submitter's tasks are
-- stored all or none: idempotency keys, the waiting bound, indexes.
-- ARGV: [1] prefix, then one group per submitter: max_waiting, now, stamp (fresh,
-- random: tokens of tasks handed to parked workers), n, then 9 per task: id,
-- status (pending or scheduled), queue, rank, run_at, type, idempotency key
-- ('' = none), request hash, task JSON.
-- Returns one answer per group: {'ok', {r1, r2, ...}} where r is {} for a created
-- task, else the HGETALL of the task stored first under its key ({'ok', {}} when
-- every task of the group was created); {'conflict', key}; or {'full', waiting}.
-- Cost: one HSET per task (and a GET, SET and HSET per idempotency key); the index
-- and counter writes are one call per script call, whatever the number of
-- submitters and tasks. A call that makes one task pending, into an empty queue,
-- hands it to a parked worker without the ready set (lib.lua's hand_over).
local W = 9
local waiting, pending_before = waiting_count()
local seq = tonumber(redis.call('HGET', COUNTS, 'seq') or '0')
local ready, delayed, all, types, scheduled = {}, {}, {}, {}, 0
local fresh = {}  -- the ARGV base of each task stored pending

-- The tasks of one group that are already stored under their idempotency key
-- (false for a fresh one), or nil and the refusal.
local function check(at, n, max_waiting)
  local firsts, seen, fresh = {}, {}, 0
  for i = 0, n - 1 do
    local base = at + i * W
    local key, hash = ARGV[base + 6], ARGV[base + 7]
    local first = false
    if key ~= '' then
      first = seen[key] or false  -- a key repeated in this group counts like a stored one
      if not first then
        local id = redis.call('GET', P .. 'idem:' .. key)
        if id then
          first = {id = id, hash = redis.call('HGET', task_key(id), 'h') or ''}
        end
      end
    end
    if first then
      if first.hash ~= hash then
        return nil, {'conflict', key}
      end
    else
      fresh = fresh + 1
      if key ~= '' then
        seen[key] = {id = ARGV[base], hash = hash}
      end
    end
    firsts[#firsts + 1] = first
  end
  if waiting + fresh > max_waiting then
    return nil, {'full', tostring(waiting)}
  end
  waiting = waiting + fresh
  return firsts
end

local function store(base)
  local id, status, queue, rank = ARGV[base], ARGV[base + 1], ARGV[base + 2], ARGV[base + 3]
  local key = ARGV[base + 6]
  seq = seq + 1
  local padded = pad16(seq)  -- one number-to-text conversion per task, not four
  redis.call('HSET', task_key(id), 'd', ARGV[base + 8], 's', status, 'q', queue, 'r', rank,
    'seq', padded, 'rev', '0')  -- no field table to unpack: a seventh of this script's cost
  if key ~= '' then
    redis.call('HSET', task_key(id), 'h', ARGV[base + 7])
    redis.call('SET', P .. 'idem:' .. key, id)
  end
  if status == 'pending' then
    fresh[#fresh + 1] = base
    ready[queue] = ready[queue] or {}
    local members = ready[queue]
    members[#members + 1] = '0'
    members[#members + 1] = member(rank, padded, id)
  else
    delayed[#delayed + 1] = ARGV[base + 4]
    delayed[#delayed + 1] = id
    scheduled = scheduled + 1
  end
  all[#all + 1] = padded
  all[#all + 1] = id
  types[ARGV[base + 5]] = (types[ARGV[base + 5]] or 0) + 1
end

local answers = {}
local at = 2
local now, stamp
while at <= #ARGV do
  local max_waiting, n = tonumber(ARGV[at]), tonumber(ARGV[at + 3])
  now, stamp = ARGV[at + 1], ARGV[at + 2]
  local first_task = at + 4
  local firsts, refusal = check(first_task, n, max_waiting)
  if firsts then
    local any_stored_before = false
    for i, first in ipairs(firsts) do
      if first then
        any_stored_before = true
      else
        store(first_task + (i - 1) * W)
      end
    end
    local found = {}  -- empty when every task of the group is new
    if any_stored_before then
      for i, first in ipairs(firsts) do
        found[i] = first and redis.call('HGETALL', task_key(first.id)) or {}
      end
    end
    answers[#answers + 1] = {'ok', found}
  else
    answers[#answers + 1] = refusal
  end
  at = first_task + n * W
end

if #fresh == 1 then  -- a lone task into an empty queue: straight to a parked worker
  local base = fresh[1]
  local id, queue, doc = ARGV[base], ARGV[base + 2], ARGV[base + 8]
  if (pending_before[queue] or 0) == 0 and hand_over(now, stamp, id, queue, doc) then
    ready[queue] = nil
  end
end
for queue, members in pairs(ready) do
  each_chunk('ZADD', P .. 'ready:' .. queue, members, 2)
  note_queue(queue)
  woke = true
end
if scheduled > 0 then
  each_chunk('ZADD', P .. 'delayed', delayed, 2)
  redis.call('HINCRBY', COUNTS, 'status:scheduled', scheduled)
end
if #all > 0 then
  redis.call('HSET', COUNTS, 'seq', seq)
  each_chunk('ZADD', P .. 'all', all, 2)
  for name, count in pairs(types) do
    redis.call('HINCRBY', COUNTS, 'type:' .. name, count)
  end
end
wake(now, stamp)  -- parked workers take the new tasks in this call
return answers
