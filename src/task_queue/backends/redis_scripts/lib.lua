-- Shared helpers, prepended to every other script when it is loaded (see redis.py).
--
-- Key layout. Every key of one prefix carries the hash tag {prefix}, so on Redis
-- Cluster a whole prefix lives on one slot (several prefixes spread over slots).
-- KEYS[1] is always <P>counts, only so that the client routes the script to that
-- slot; ARGV[1] is the key prefix P = "{prefix}:".
--
--   P..task:<id>       hash    one task: a field per Task field (absent = None),
--                              plus seq (submit order), rank and rev (bumped by
--                              every write, for compare-and-set from Python)
--   P..ready:<queue>   zset    pending tasks; every score 0, so members sort by
--                              bytes: rank .. seq16 .. '|' .. id where
--                              rank = %02d of (10 - priority) .. %016d of run_at in
--                              microseconds, seq16 = seq zero-padded to 16 digits.
--                              Lowest member = highest priority, earliest run_at,
--                              first submitted: the contract's order, exactly.
--   P..queues          set     every queue name used (dequeue from "all queues")
--   P..delayed         zset    scheduled + retrying tasks, score run_at (seconds)
--   P..leased          zset    running tasks, score lease_expires_at (seconds)
--   P..final:<status>  zset    completed / failed / cancelled, score completed_at
--   P..all             zset    every task, score seq (listing, cursors)
--   P..idem:<key>      string  id of the task submitted with this idempotency key
--   P..counts          hash    seq, processed, failed, status:<s>, type:<t>
--   P..workers         hash    worker id -> WorkerInfo JSON
--   P..wake            channel a message whenever tasks become pending
--
-- Time never comes from Redis: callers pass `now` (the injected clock).

local P = ARGV[1]
local COUNTS = P .. 'counts'
local WAITING = {pending = true, scheduled = true, retrying = true}
local FINAL = {completed = true, failed = true, cancelled = true}
local woke = false

local function pad16(n)
  local s = tostring(n)
  return string.rep('0', 16 - #s) .. s
end

-- The stored fields that decide which index holds a task.
local function where(id)
  local f = redis.call('HMGET', P .. 'task:' .. id,
    'status', 'queue', 'rank', 'seq', 'run_at', 'lease_expires_at', 'completed_at')
  return {status = f[1], queue = f[2], rank = f[3], seq = f[4], run_at = f[5],
          lease = f[6], done = f[7]}
end

local function ready_member(id, w)
  return w.rank .. pad16(w.seq) .. '|' .. id
end

local function unindex(id, w)
  local s = w.status
  if s == 'pending' then
    redis.call('ZREM', P .. 'ready:' .. w.queue, ready_member(id, w))
  elseif s == 'scheduled' or s == 'retrying' then
    redis.call('ZREM', P .. 'delayed', id)
  elseif s == 'running' then
    redis.call('ZREM', P .. 'leased', id)
  elseif FINAL[s] then
    redis.call('ZREM', P .. 'final:' .. s, id)
  end
  redis.call('HINCRBY', COUNTS, 'status:' .. s, -1)
end

local function index(id, w)
  local s = w.status
  if s == 'pending' then
    redis.call('ZADD', P .. 'ready:' .. w.queue, 0, ready_member(id, w))
    woke = true
  elseif s == 'scheduled' or s == 'retrying' then
    redis.call('ZADD', P .. 'delayed', w.run_at, id)
  elseif s == 'running' then
    redis.call('ZADD', P .. 'leased', w.lease, id)
  elseif FINAL[s] then
    redis.call('ZADD', P .. 'final:' .. s, w.done, id)
  end
  redis.call('HINCRBY', COUNTS, 'status:' .. s, 1)
end

-- Overwrite a task's fields (all strings) and delete those that became None.
local function write(id, fields, deletes)
  local key = P .. 'task:' .. id
  if #deletes > 0 then
    redis.call('HDEL', key, unpack(deletes))
  end
  local flat = {}
  for name, value in pairs(fields) do
    flat[#flat + 1] = name
    flat[#flat + 1] = value
  end
  if #flat > 0 then
    redis.call('HSET', key, unpack(flat))
  end
  redis.call('HINCRBY', key, 'rev', 1)
end

local function waiting_count()
  local c = redis.call('HMGET', COUNTS, 'status:pending', 'status:scheduled', 'status:retrying')
  return (tonumber(c[1]) or 0) + (tonumber(c[2]) or 0) + (tonumber(c[3]) or 0)
end

-- Due scheduled and retrying tasks become pending, as Task.promoted(now) does:
-- only status and updated_at change. At most `limit` per call, to bound the script.
local function promote_due(now, limit)
  local ids = redis.call('ZRANGEBYSCORE', P .. 'delayed', '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(ids) do
    unindex(id, where(id))
    write(id, {status = 'pending', updated_at = now}, {})
    index(id, where(id))
  end
  return #ids
end

-- Move a task to its new state: indexes, status counters, and processed/failed
-- when it becomes final (cancelled counts in neither). Used by store and finish.
local function settle(id, fields, deletes)
  local old = where(id)
  unindex(id, old)
  write(id, fields, deletes)
  index(id, where(id))
  if FINAL[fields.status] and not FINAL[old.status] and fields.status ~= 'cancelled' then
    redis.call('HINCRBY', COUNTS, 'processed', 1)
    if fields.status == 'failed' then
      redis.call('HINCRBY', COUNTS, 'failed', 1)
    end
  end
end

local function wake()
  if woke then
    redis.call('PUBLISH', P .. 'wake', '1')
  end
end
