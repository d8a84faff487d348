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
-- submitters and tasks. A call of one task, pending into an empty queue, hands it
-- to a parked worker without the ready set (hand_over below).
local W = 9
local waiting, pending_before = waiting_count()
local seq = tonumber(redis.call('HGET', COUNTS, 'seq') or '0')
local ready, delayed, all, types, scheduled = {}, {}, {}, {}, 0
local lone = #ARGV == 5 + W  -- the prefix, one submitter's 4, one task
local now, stamp  -- of the submitter being stored

-- The first live park with a free slot that takes from `queue` (as each_park
-- gives it), or nil.
local function taker(now, queue)
  local found = nil
  each_park(now, function(park)
    if park.want > 0 and takes_any(park.names, function(name) return name == queue end) then
      found = park
    end
    return found ~= nil
  end)
  return found
end

-- A lone task into an empty queue goes straight to a parked worker: stored leased
-- to it in the one write that stores it (`...`: its other fields), and never in the
-- ready set. That is feed's outcome (a worker parks only when its queues were
-- empty, so the task is its best) with four commands fewer (ZADD, ZPOPMIN, HMGET
-- and a second HSET), on the path that decides how soon a quiet queue starts a
-- task. Returns whether it was handed.
local function hand_over(now, stamp, id, queue, doc, ...)
  local park = taker(now, queue)
  if not park then
    return false
  end
  local token, expires = stamp .. '.1', lease_until(now, park.seconds)
  lease_one(task_key(id), token, now, expires, park.worker, 'd', doc, 'q', queue, ...)
  redis.call('ZADD', P .. 'leased', expires, id)
  deliver(park.worker, {inbox_item(token, expires, now, '', '', doc)})
  count_off(park, 1)
  return true
end

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
  local key, doc = ARGV[base + 6], ARGV[base + 8]
  seq = seq + 1
  local padded = pad16(seq)  -- one number-to-text conversion per task, not four
  local pending = status == 'pending'
  if not (pending and lone and (pending_before[queue] or 0) == 0
      and hand_over(now, stamp, id, queue, doc, 'r', rank, 'seq', padded)) then
    redis.call('HSET', task_key(id), 'd', doc, 's', status, 'q', queue, 'r', rank,
      'seq', padded, 'rev', '0')  -- no field table to unpack: a seventh of this script's cost
    if pending then
      ready[queue] = ready[queue] or {}
      local members = ready[queue]
      members[#members + 1] = '0'
      members[#members + 1] = member(rank, padded, id)
    end
  end
  if key ~= '' then
    redis.call('HSET', task_key(id), 'h', ARGV[base + 7])
    redis.call('SET', P .. 'idem:' .. key, id)
  end
  if not pending then
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
