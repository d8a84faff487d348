-- Shared helpers, prepended to every other script when it is loaded (see redis.py).
--
-- Key layout. Every key of one prefix carries the hash tag {prefix}, so on Redis
-- Cluster a whole prefix lives on one slot (several prefixes spread over slots).
-- KEYS[1] is always <P>counts, only so that the client routes the script to that
-- slot; ARGV[1] is the key prefix P = "{prefix}:".
--
--   P..task:<id>       hash    one task, written whole by Python and touched by
--                              the scripts only in the small fields:
--     d    the task as Python last wrote it (JSON object of the Task fields);
--          never parsed here, so a script's cost does not grow with the payload
--     s    status now (d's may be older: promote and dequeue change only s)
--     q, r, seq        queue, rank and submit sequence, to build the ready member
--     rev  compare-and-set stamp: replaced by every write that a read-compute-write
--          in Python could race with (dequeue, finish, promote, store)
--     u    updated_at, when changed since d was written ('' = d's holds)
--     p    progress JSON (kept across attempts; only a whole write with another
--          value, or a requeue, replaces it)
--     c    '1' when a cancel was asked while the task runs (d has the flag after that)
--     h    request hash, when the task has an idempotency key
--     while running (set by dequeue; the next whole write empties l, which ends
--     the lease, u and c in the same HSET rather than deleting them):
--     l lease token, x lease expiry, w worker id, n started_at; the attempt is
--     counted by the reader (d holds attempts before this lease)
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
--   P..counts          hash    seq, processed, failed, type:<t>, and
--                              status:scheduled / status:retrying (the split of
--                              delayed); every other status count is a ZCARD
--   P..workers         hash    worker id -> WorkerInfo JSON
--   P..wake            channel a message whenever tasks become pending
--   P..rate:<client>   hash    an HTTP rate-limit bucket (ratelimit.lua says more)
--
-- Time never comes from Redis: callers pass `now` (the injected clock).

local P = ARGV[1]
local COUNTS = P .. 'counts'
local DELAYED = {scheduled = true, retrying = true}
local FINAL = {completed = true, failed = true, cancelled = true}
local CHUNK = 1000  -- members per variadic call, well under Lua's unpack limit
local woke = false

local function pad16(n)
  local s = tostring(n)
  return string.rep('0', 16 - #s) .. s
end

local function member(rank, seq, id)
  return rank .. pad16(seq) .. '|' .. id
end

local function task_key(id)
  return P .. 'task:' .. id
end

-- One variadic command over a long list, in chunks: ZADD key s1 m1 s2 m2 ...
local function each_chunk(command, key, items, width)
  local step = CHUNK * width
  for first = 1, #items, step do
    redis.call(command, key, unpack(items, first, math.min(first + step - 1, #items)))
  end
end

-- Remove task `id` (stored status s, queue q, rank r, sequence seq) from its index.
local function unindex(id, s, q, r, seq)
  if s == 'pending' then
    redis.call('ZREM', P .. 'ready:' .. q, member(r, seq, id))
  elseif DELAYED[s] then
    redis.call('ZREM', P .. 'delayed', id)
    redis.call('HINCRBY', COUNTS, 'status:' .. s, -1)
  elseif s == 'running' then
    redis.call('ZREM', P .. 'leased', id)
  elseif FINAL[s] then
    redis.call('ZREM', P .. 'final:' .. s, id)
  end
end

-- Add it to the index of status s; `score` is run_at (delayed) or completed_at (final).
local function index(id, s, q, r, seq, score)
  if s == 'pending' then
    redis.call('ZADD', P .. 'ready:' .. q, 0, member(r, seq, id))
    woke = true
  elseif DELAYED[s] then
    redis.call('ZADD', P .. 'delayed', score, id)
    redis.call('HINCRBY', COUNTS, 'status:' .. s, 1)
  elseif FINAL[s] then
    redis.call('ZADD', P .. 'final:' .. s, score, id)
  end
end

-- Pending tasks per queue and the total waiting (pending + scheduled + retrying).
local function waiting_count()
  local total = redis.call('ZCARD', P .. 'delayed')
  for _, queue in ipairs(redis.call('SMEMBERS', P .. 'queues')) do
    total = total + redis.call('ZCARD', P .. 'ready:' .. queue)
  end
  return total
end

-- Due scheduled and retrying tasks become pending, as Task.promoted(now) does:
-- only status and updated_at change. At most `limit` per call, to bound the
-- script; `stamp` makes each promoted task's rev new.
local function promote_due(now, limit, stamp)
  local ids = redis.call('ZRANGEBYSCORE', P .. 'delayed', '-inf', now, 'LIMIT', 0, limit)
  if #ids == 0 then
    return 0
  end
  local left = {}
  for i, id in ipairs(ids) do
    local key = task_key(id)
    local f = redis.call('HMGET', key, 's', 'q', 'r', 'seq')
    left[f[1]] = (left[f[1]] or 0) + 1
    redis.call('ZADD', P .. 'ready:' .. f[2], 0, member(f[3], f[4], id))
    redis.call('HSET', key, 's', 'pending', 'u', now, 'rev', stamp .. ':' .. i)
  end
  each_chunk('ZREM', P .. 'delayed', ids, 1)
  for status, n in pairs(left) do
    redis.call('HINCRBY', COUNTS, 'status:' .. status, -n)
  end
  woke = true
  return #ids
end

local function wake()
  if woke then
    redis.call('PUBLISH', P .. 'wake', '1')
  end
end
