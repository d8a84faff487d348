-- Store new tasks for several submitters in one call; each submitter's tasks are
-- stored all or none: idempotency keys, the waiting bound, indexes.
-- ARGV: [1] prefix, then one group per submitter: max_waiting, now, stamp (fresh,
-- random: tokens of tasks handed to parked workers), n, then its n tasks in runs
-- of tasks that share all but id and JSON: count, status (pending or scheduled),
-- queue, rank, run_at as a score (lib.lua: whole microseconds), type, idempotency
-- key ('' = none), request hash, then count times id, task JSON. A batch of one
-- type is one run: 2 arguments a task, not 9, for Redis to read and Lua to hold.
-- Returns one answer per group: 1 when every task of the group was created; else
-- {'ok', {r1, r2, ...}} where r is {} for a created task, else the HGETALL of the
-- task stored first under its key; {'conflict', key}; or {'full', waiting}. The
-- common answer is a number: Redis turns each table a script returns into a reply
-- by looking up six names in it, and {{'ok', {}}} was 4% of a lone submit.
-- Cost: one HSET per task (and a GET, SET and HSET per idempotency key), one
-- HINCRBY per submitter for its sequences; the index and counter writes are one
-- call per script call, whatever the number of submitters and tasks. A call of
-- one task, pending into an empty queue, hands it to a parked worker without the
-- ready set (hand_over below).
local RUN = 8  -- a run's count and shared fields, before its tasks
local waiting, pending_before = waiting_count()
local seq  -- the submit sequence of the task stored last
local ready, delayed, all, types, scheduled = {}, {}, {}, {}, 0
local lone = #ARGV == 5 + RUN + 2  -- the prefix, one submitter's 4, one run of one task
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
  local token, expires, score = stamp .. '.1', lease_until(now, park.seconds)
  lease_one(task_key(id), token, now, expires, park.worker, 'd', doc, 'q', queue, ...)
  redis.call('ZADD', P .. 'leased', score, id)
  deliver(park.worker, {inbox_item(token, expires, now, '', '', doc)})
  count_off(park, 1)
  return true
end

-- Walking a group's tasks: a task is its run (the ARGV index of the run's count),
-- its slot (that of its id) and the slot of its run's last task. That last one
-- comes from the count, read once per run and never for a lone task: tonumber is
-- a strtod, about a thousand instructions. first_task gives the first task of the
-- runs from ARGV[at]; next_task the one after a task that is not its group's last.
local function first_task(at)
  return at, at + RUN, nil
end

local function next_task(run, slot, last)
  last = last or run + RUN + 2 * (tonumber(ARGV[run]) - 1)
  if slot < last then
    return run, slot + 2, last
  end
  return first_task(last + 2)
end

-- Where a refused group, whose n tasks start at ARGV[at], ends.
local function skip(at, n)
  while n > 0 do
    local count = tonumber(ARGV[at])
    n, at = n - count, at + RUN + 2 * count
  end
  return at
end

-- The tasks of one group that are already stored under their idempotency key
-- (false for a fresh one) and how many are fresh, or nil, 0 and the refusal.
local function check(at, n, max_waiting)
  local firsts, seen, fresh = {}, {}, 0
  local run, slot, last = first_task(at)
  for i = 1, n do
    if i > 1 then
      run, slot, last = next_task(run, slot, last)
    end
    local key, hash = ARGV[run + 6], ARGV[run + 7]
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
        return nil, 0, {'conflict', key}
      end
    else
      fresh = fresh + 1
      if key ~= '' then
        seen[key] = {id = ARGV[slot], hash = hash}
      end
    end
    firsts[i] = first
  end
  if waiting + fresh > max_waiting then
    return nil, 0, {'full', tostring(waiting)}
  end
  waiting = waiting + fresh
  return firsts, fresh
end

local function store(run, slot)
  local id, doc = ARGV[slot], ARGV[slot + 1]
  local status, queue, rank, key = ARGV[run + 1], ARGV[run + 2], ARGV[run + 3], ARGV[run + 6]
  seq = seq + 1
  local padded = pad16(seq)  -- one number-to-text conversion per task, not four
  local pending = status == 'pending'
  if not (pending and lone and (pending_before[queue] or 0) == 0
      and hand_over(now, stamp, id, queue, doc, 'r', rank, 'seq', padded)) then
    redis.call('HSET', task_key(id), 'd', doc, 's', status, 'q', queue, 'r', rank,
      'seq', padded)  -- no field table to unpack: a seventh of this script's cost
    if pending then
      ready[queue] = ready[queue] or {}
      local members = ready[queue]
      members[#members + 1] = '0'
      members[#members + 1] = member(rank, padded, id)
    end
  end
  if key ~= '' then
    redis.call('HSET', task_key(id), 'h', ARGV[run + 7])
    redis.call('SET', P .. 'idem:' .. key, id)
  end
  if not pending then
    delayed[#delayed + 1] = ARGV[run + 4]
    delayed[#delayed + 1] = id
    scheduled = scheduled + 1
  end
  all[#all + 1] = padded
  all[#all + 1] = id
  types[ARGV[run + 5]] = (types[ARGV[run + 5]] or 0) + 1
end

local answers = {}
local at = 2
while at <= #ARGV do
  local max_waiting, n = tonumber(ARGV[at]), tonumber(ARGV[at + 3])
  now, stamp = ARGV[at + 1], ARGV[at + 2]
  local tasks_at = at + 4
  local firsts, fresh, refusal = check(tasks_at, n, max_waiting)
  if firsts then
    if fresh > 0 then  -- one call takes the group's sequences: no HGET, strtod and HSET
      seq = redis.call('HINCRBY', COUNTS, 'seq', fresh) - fresh
    end
    local any_stored_before = false
    local run, slot, last = first_task(tasks_at)
    for i, first in ipairs(firsts) do
      if i > 1 then
        run, slot, last = next_task(run, slot, last)
      end
      if first then
        any_stored_before = true
      else
        store(run, slot)
      end
    end
    local answer = 1
    if any_stored_before then
      local found = {}
      for i, first in ipairs(firsts) do
        found[i] = first and redis.call('HGETALL', task_key(first.id)) or {}
      end
      answer = {'ok', found}
    end
    answers[#answers + 1] = answer
    at = slot + 2  -- after the group's last task
  else
    answers[#answers + 1] = refusal
    at = skip(tasks_at, n)
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
  each_chunk('ZADD', P .. 'all', all, 2)
  for name, count in pairs(types) do
    redis.call('HINCRBY', COUNTS, 'type:' .. name, count)
  end
end
wake(now, stamp)  -- parked workers take the new tasks in this call
return answers
