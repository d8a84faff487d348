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

-- A group's tasks come in runs (see above); a run's tasks all share its
-- idempotency key, so a group is checked and stored run by run. A run without a
-- key is stored in one loop that reads the run's fields once: per task, Lua
-- runs little more than the HSET and the two index entries it builds.

-- The count of the run at ARGV[run], with `left` tasks of its group from there
-- on. With one left it is 1, as for every lone submit: tonumber is a strtod,
-- about a thousand instructions.
local function run_count(run, left)
  return left == 1 and 1 or tonumber(ARGV[run])
end

-- The run after the run at ARGV[run] of `count` tasks.
local function next_run(run, count)
  return run + RUN + 2 * count
end

-- One group's runs ({at, count, new, id} each: its first `new` tasks are new,
-- the others repeat task `id`, stored under their key; `after`: where the next
-- group starts) and how many tasks are new, or nil, 0 and the refusal. A run
-- shares its key, so only its first task can be new: a key repeated in a group
-- counts like a stored one.
local function check(at, n, max_waiting)
  local runs, seen, fresh = {}, {}, 0
  local run, left = at, n
  while left > 0 do
    local count, key = run_count(run, left), ARGV[run + 6]
    local new, first = count, false
    if key ~= '' then
      local hash = ARGV[run + 7]
      first = seen[key] or false
      if not first then
        local id = redis.call('GET', P .. 'idem:' .. key)
        if id then
          first = {id = id, hash = redis.call('HGET', task_key(id), 'h') or ''}
        end
      end
      if first and first.hash ~= hash then
        return nil, 0, {'conflict', key}
      end
      if first then
        new = 0
      else
        new, first = 1, {id = ARGV[run + RUN], hash = hash}
        seen[key] = first
      end
    end
    fresh = fresh + new
    runs[#runs + 1] = {run, count, new, first and first.id}
    run, left = next_run(run, count), left - count
  end
  if waiting + fresh > max_waiting then
    return nil, 0, {'full', tostring(waiting)}
  end
  waiting = waiting + fresh
  runs.after = run
  return runs, fresh
end

-- Where a refused group, whose n tasks start at ARGV[at], ends.
local function skip(at, n)
  while n > 0 do
    local count = run_count(at, n)
    n, at = n - count, next_run(at, count)
  end
  return at
end

-- Store the first `count` tasks of the run at ARGV[run]: all of a run without a
-- key, the first of one with a key (the others repeat it).
local function store(run, count)
  local status, queue, rank, kind = ARGV[run + 1], ARGV[run + 2], ARGV[run + 3], ARGV[run + 5]
  local pending = status == 'pending'
  local handing = pending and lone and (pending_before[queue] or 0) == 0
  local members = ready[queue]  -- made when a task goes in: a task handed over does not
  local m, a = members and #members or 0, #all
  for slot = run + RUN, run + RUN + 2 * (count - 1), 2 do
    local id, doc = ARGV[slot], ARGV[slot + 1]
    seq = seq + 1
    -- pad16(seq), then task_key(id) and member(rank, padded, id) of lib.lua,
    -- written out: their four calls were 4.5% of a batched task's instructions.
    local padded = string.format('%016d', seq)
    if not (handing and hand_over(now, stamp, id, queue, doc, 'r', rank, 'seq', padded)) then
      redis.call('HSET', P .. 'task:' .. id, 'd', doc, 's', status, 'q', queue, 'r', rank,
        'seq', padded)  -- no field table to unpack: a seventh of this script's cost
      if pending then
        if not members then
          members = {}
          ready[queue] = members
        end
        members[m + 1], members[m + 2] = '0', rank .. padded .. '|' .. id
        m = m + 2
      end
    end
    if not pending then
      delayed[#delayed + 1] = ARGV[run + 4]
      delayed[#delayed + 1] = id
    end
    all[a + 1], all[a + 2] = padded, id
    a = a + 2
  end
  local key = ARGV[run + 6]
  if key ~= '' then
    local id = ARGV[run + RUN]
    redis.call('HSET', task_key(id), 'h', ARGV[run + 7])
    redis.call('SET', P .. 'idem:' .. key, id)
  end
  if not pending then
    scheduled = scheduled + count
  end
  types[kind] = (types[kind] or 0) + count
end

-- A group's answer when some of its tasks repeat a stored one: per task, {} when
-- created now, else the HGETALL of the task it repeats.
local function found(runs)
  local answer = {}
  for _, r in ipairs(runs) do
    local count, new, id = r[2], r[3], r[4]
    local stored = new < count and redis.call('HGETALL', task_key(id))
    for i = 1, count do
      answer[#answer + 1] = i <= new and {} or stored
    end
  end
  return {'ok', answer}
end

local answers = {}
local at = 2
while at <= #ARGV do
  local max_waiting, n = tonumber(ARGV[at]), tonumber(ARGV[at + 3])
  now, stamp = ARGV[at + 1], ARGV[at + 2]
  local tasks_at = at + 4
  local runs, fresh, refusal = check(tasks_at, n, max_waiting)
  if runs then
    if fresh > 0 then  -- one call takes the group's sequences: no HGET, strtod and HSET
      seq = redis.call('HINCRBY', COUNTS, 'seq', fresh) - fresh
    end
    local repeats = false
    for _, r in ipairs(runs) do
      local run, count, new = r[1], r[2], r[3]
      if new > 0 then
        store(run, new)
      end
      repeats = repeats or new < count
    end
    answers[#answers + 1] = repeats and found(runs) or 1
    at = runs.after
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
