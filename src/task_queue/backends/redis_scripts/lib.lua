-- Shared helpers. Each script is loaded with those it reaches in front of it
-- (redis.py's load_script): a top-level definition goes in when the script, or a
-- definition that went in, names it. So a definition may use only those above it.
--
-- Key layout. Every key of one prefix carries the hash tag {prefix}, so on Redis
-- Cluster a whole prefix lives on one slot (several prefixes spread over slots).
-- KEYS[1] is always <P>counts, only so that the client routes the script to that
-- slot; ARGV[1] is the key prefix P = "{prefix}:".
--
--   P..task:<id>       hash    one task, written whole by Python and touched by
--                              the scripts only in the small fields:
--     d    the task as Python last wrote it (JSON object of the Task fields, but
--          for those null by default and now, and the status, which s holds); only
--          purge.lua decodes it and walk.lua searches it, both bounded by bytes: no
--          script on a task's way from submit to result reads inside it
--     s    status now; decode reads it here only (older documents hold one in d too)
--     q, r, seq        queue, rank and submit sequence, to build the ready member
--                      (enqueue stores seq zero-padded, as the member holds it;
--                      tasks stored before that hold it bare: member pads either)
--     rev  compare-and-set stamp: replaced by every write that a read-compute-write
--          in Python could race with (dequeue, finish, promote, store); absent
--          until the first, which reads as '0' (one field fewer per submit)
--     u    updated_at, when changed since d was written ('' = d's holds)
--     p    progress JSON (kept across attempts; only a whole write with another
--          value, or a requeue, replaces it)
--     c    '1' when a cancel was asked while the task runs (d has the flag after that)
--     h    request hash, when the task has an idempotency key
--     while running (set by dequeue; the next whole write, rewrite() below,
--     deletes them with u and c, which ends the lease):
--     l lease token, x lease expiry, w worker id, n started_at; the attempt is
--     counted by the reader (d holds attempts before this lease)
--   P..ready:<queue>   zset    pending tasks; every score 0, so members sort by
--                              bytes: rank .. seq16 .. '|' .. id where
--                              rank = %02d of (10 - priority) .. %016d of run_at in
--                              microseconds, seq16 = seq zero-padded to 16 digits.
--                              Lowest member = highest priority, earliest run_at,
--                              first submitted: the contract's order, exactly.
--   P..queues          set     the queues with ready tasks, and those emptied since
--                              the last submit (dequeue from "all queues")
--   P..delayed         zset    scheduled + retrying tasks, score run_at
--   P..leased          zset    running tasks, score lease_expires_at
--   P..final:<status>  zset    completed / failed / cancelled, score completed_at
--                              (these three scores are moments in whole
--                              microseconds: integers, see below)
--   P..all             zset    every task, score seq (listing, cursors)
--   P..idem:<key>      string  id of the task submitted with this idempotency key
--   P..counts          hash    seq, processed, failed, type:<t>, and
--                              status:scheduled / status:retrying (the split of
--                              delayed); every other status count is a ZCARD
--   P..workers         hash    worker id -> WorkerInfo JSON
--   P..parks           hash    idle workers blocked on their inbox: worker id ->
--                              'until\nls\nn\nq': parked until (seconds; a park
--                              that ran out is never handed a task), its lease
--                              seconds, how many tasks it may still be handed (its
--                              free slots when it parked), its queue names joined
--                              by '\n' ('' = every queue). One hash, not a key per
--                              worker: a submit reads every park in one call
--   P..inbox:<worker>  list    tasks handed to it, leased already, each
--                              'token\nexpires\nnow\nc\np\nd' (c, p as in the hash,
--                              '' when absent); '' alone ends its wait with nothing
--   P..rate:<client>   hash    an HTTP rate-limit bucket (ratelimit.lua says more)
--   P..finals          channel the ids of tasks that became final, '\n' between them,
--                              published by finish.lua and store.lua for waits
--
-- Time never comes from Redis: callers pass `now` (the injected clock).
--
-- A zset scored by a moment holds it in whole microseconds, an integer
-- (redis_codec.moment_score; lease_until here). A zset of up to 128 members is a
-- listpack, and ZADD walks it to the new member's place reading every score on
-- the way: a strtod each when scores are decimal text, nothing when they are
-- integers. A new lease, retry or final task sorts last, so each insert reads
-- every member's score: with 50 leases in flight, decimal scores cost a quarter
-- of Redis's work per task.

local P = ARGV[1]
local COUNTS = P .. 'counts'
local FINALS = P .. 'finals'  -- where the ids of tasks made final go (redis.py's _Finals)
local DELAYED = {scheduled = true, retrying = true}
local FINAL = {completed = true, failed = true, cancelled = true}
local CHUNK = 1000  -- members per variadic call, well under Lua's unpack limit
local woke = false

-- Zero-padded to 16 digits; a text already 16 long (a padded seq) comes back as it
-- is. One string.format, not tostring, rep and a concatenation: it runs per task.
local function pad16(n)
  if type(n) == 'string' and #n == 16 then
    return n
  end
  return string.format('%016d', n)
end

local function member(rank, seq, id)
  return rank .. pad16(seq) .. '|' .. id
end

-- The id in a member(), and where its '|' is: the padded sequence ends just before.
local function member_id(entry)
  local bar = string.find(entry, '|', 1, true)
  return string.sub(entry, bar + 1), bar
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

-- The queues that hold ready tasks (and those emptied since the last submit),
-- read once per script call (SMEMBERS). The list keeps each name once; in_set
-- is what this call knows of P..queues, which note_queue and waiting_count
-- keep current, so a queue already listed costs no SADD.
local known_queues, listed, in_set = nil, {}, {}

local function all_queues()
  if known_queues == nil then
    known_queues = redis.call('SMEMBERS', P .. 'queues')
    for _, name in ipairs(known_queues) do
      listed[name], in_set[name] = true, true
    end
  end
  return known_queues
end

-- Tasks became ready in queue `name`: list it, unless this call knows it is.
local function note_queue(name)
  if not in_set[name] then
    in_set[name] = true
    redis.call('SADD', P .. 'queues', name)
    if known_queues and not listed[name] then
      listed[name] = true
      known_queues[#known_queues + 1] = name
    end
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

-- A whole write of the task at `key`: d, status, rank and rev replaced, and the
-- fields laid over the old d deleted (the lease l, x, w, n; u; c). That ends any
-- lease, and a finished task, kept for days, holds six fields, not twelve.
local function rewrite(key, doc, status, rank, rev)
  redis.call('HSET', key, 'd', doc, 's', status, 'r', rank, 'rev', rev)
  redis.call('HDEL', key, 'l', 'x', 'w', 'n', 'u', 'c')
end

-- Add it to the index of status s; `score` is run_at (delayed) or completed_at (final).
local function index(id, s, q, r, seq, score)
  if s == 'pending' then
    redis.call('ZADD', P .. 'ready:' .. q, 0, member(r, seq, id))
    note_queue(q)
    woke = true
  elseif DELAYED[s] then
    redis.call('ZADD', P .. 'delayed', score, id)
    redis.call('HINCRBY', COUNTS, 'status:' .. s, 1)
  elseif FINAL[s] then
    redis.call('ZADD', P .. 'final:' .. s, score, id)
  end
end

-- The total waiting (pending + scheduled + retrying), and the pending tasks of
-- each listed queue (queue -> count). A queue found empty leaves P..queues, so
-- a submit's count costs a ZCARD per queue with tasks ready, not per queue name
-- ever used; note_queue lists it again in this call if tasks become ready there.
local function waiting_count()
  local total, pending = redis.call('ZCARD', P .. 'delayed'), {}
  for _, queue in ipairs(all_queues()) do
    local count = redis.call('ZCARD', P .. 'ready:' .. queue)
    if count == 0 then
      redis.call('SREM', P .. 'queues', queue)
      in_set[queue] = false
    end
    pending[queue] = count
    total = total + count
  end
  return total, pending
end

-- Due scheduled and retrying tasks become pending, as Task.promoted(now) does:
-- only status and updated_at change. At most `limit` per call, to bound the
-- script; `stamp` makes each promoted task's rev new. `due`: now as a score.
local function promote_due(now, due, limit, stamp)
  local ids = redis.call('ZRANGEBYSCORE', P .. 'delayed', '-inf', due, 'LIMIT', 0, limit)
  if #ids == 0 then
    return 0
  end
  local left = {}
  for i, id in ipairs(ids) do
    local key = task_key(id)
    local f = redis.call('HMGET', key, 's', 'q', 'r', 'seq')
    left[f[1]] = (left[f[1]] or 0) + 1
    redis.call('ZADD', P .. 'ready:' .. f[2], 0, member(f[3], f[4], id))
    note_queue(f[2])
    redis.call('HSET', key, 's', 'pending', 'u', now, 'rev', stamp .. ':' .. i)
  end
  each_chunk('ZREM', P .. 'delayed', ids, 1)
  for status, n in pairs(left) do
    redis.call('HINCRBY', COUNTS, 'status:' .. status, -n)
  end
  woke = true
  return #ids
end

-- The queues a worker takes from: the names it listens on, or every queue.
local function queue_names(names)
  if #names == 0 then
    return all_queues()
  end
  return names
end

-- Pop the ids of up to `limit` pending tasks, best first across `queues`:
-- one ZPOPMIN for a single queue, else a compare over the queues' heads.
local function take(queues, limit)
  local popped = {}
  if limit <= 0 then
    return popped
  end
  if #queues == 1 then
    local flat = redis.call('ZPOPMIN', P .. 'ready:' .. queues[1], limit)
    for i = 1, #flat, 2 do
      popped[#popped + 1] = flat[i]
    end
  elseif #queues > 1 then
    local function head(queue)
      return redis.call('ZRANGE', P .. 'ready:' .. queue, 0, 0)[1]
    end
    local heads = {}
    for i, queue in ipairs(queues) do
      heads[i] = head(queue)
    end
    while #popped < limit do
      local best = nil
      for i = 1, #queues do
        if heads[i] and (best == nil or heads[i] < heads[best]) then
          best = i
        end
      end
      if best == nil then
        break
      end
      popped[#popped + 1] = heads[best]
      redis.call('ZREM', P .. 'ready:' .. queues[best], heads[best])
      heads[best] = head(queues[best])
    end
  end
  for i, entry in ipairs(popped) do
    popped[i] = (member_id(entry))
  end
  return popped
end

-- The lease is the small fields l, x, w, n (above); the reader turns them into
-- Task.leased()'s running task with one more attempt. `...`: more fields to
-- write with it, in the same HSET.
local function lease_one(key, token, now, expires, worker, ...)
  redis.call('HSET', key, 's', 'running', 'l', token, 'x', expires, 'w', worker, 'n', now,
    'u', now, 'rev', token, ...)
end

-- Lease the popped tasks to `worker`, the i-th with tokens[i], until `expires`,
-- which P..leased scores as `score` (lease_until gives both). Returns {d, p, c}
-- of each task.
local function lease(ids, tokens, now, expires, score, worker)
  local taken, leased = {}, {}
  for i, id in ipairs(ids) do
    local key, token = task_key(id), tokens[i]
    lease_one(key, token, now, expires, worker)
    taken[i] = redis.call('HMGET', key, 'd', 'p', 'c')
    leased[#leased + 1] = score
    leased[#leased + 1] = id
  end
  if #leased > 0 then
    each_chunk('ZADD', P .. 'leased', leased, 2)
  end
  return taken
end

local PARKS = P .. 'parks'
local KEEP_INBOX = 600  -- seconds the inbox of a worker that vanished while parked stays

-- When a lease taken at `now` for `seconds` (text, as parks store them) runs out:
-- as the task's x holds it, and as its score in P..leased (whole microseconds,
-- as redis_codec.moment_score computes them).
local function lease_until(now, seconds)
  local at = tonumber(now) + tonumber(seconds)
  return string.format('%.6f', at), string.format('%d', math.floor(at * 1e6 + 0.5))
end

-- One task handed to a parked worker, as its inbox holds it (c, p: '' when absent).
-- One concatenation: table.concat's table cost a lone submit 3,300 instructions.
local function inbox_item(token, expires, now, c, p, d)
  return token .. '\n' .. expires .. '\n' .. now .. '\n' .. (c or '') .. '\n' .. (p or '')
    .. '\n' .. d
end

local function deliver(worker, items)
  local inbox = P .. 'inbox:' .. worker
  each_chunk('RPUSH', inbox, items, 1)
  redis.call('EXPIRE', inbox, KEEP_INBOX)
end

-- A park as P..parks holds it; `names` is the names' text.
local function park_text(until_, seconds, slots, names)
  return until_ .. '\n' .. seconds .. '\n' .. slots .. '\n' .. names
end

-- A live park (each_park) was handed `handed` tasks: it is dropped once it has no
-- free slot left.
local function count_off(park, handed)
  if handed == park.want then
    redis.call('HDEL', PARKS, park.worker)
  elseif handed > 0 then
    local text = park_text(park.until_, park.seconds, park.want - handed, park.names_text)
    redis.call('HSET', PARKS, park.worker, text)
  end
end

local function split(text)
  local names = {}
  for name in string.gmatch(text, '[^\n]+') do
    names[#names + 1] = name
  end
  return names
end

-- Visits the parks that have not run out, in the order P..parks lists them, until
-- `visit` returns true; each as {worker, until_, seconds (text), want (free slots),
-- names ({} = every queue), names_text}. Parks that ran out (the worker died or is
-- late) are dropped, visited or not; only a visited park is read whole, so a
-- submit that the first park takes costs little more with many idle workers.
local function each_park(now, visit)
  local flat = redis.call('HGETALL', PARKS)
  local gone, at, done = {}, tonumber(now), false
  for i = 1, #flat, 2 do
    local text = flat[i + 1]
    local a = string.find(text, '\n', 1, true)
    local until_ = string.sub(text, 1, a - 1)
    if tonumber(until_) < at then
      gone[#gone + 1] = flat[i]
    elseif not done then
      local b = string.find(text, '\n', a + 1, true)
      local c = string.find(text, '\n', b + 1, true)
      local names = string.sub(text, c + 1)
      done = visit({
        worker = flat[i], until_ = until_, seconds = string.sub(text, a + 1, b - 1),
        want = tonumber(string.sub(text, b + 1, c - 1)), names = split(names), names_text = names,
      })
    end
  end
  if #gone > 0 then
    each_chunk('HDEL', PARKS, gone, 1)
  end
end

-- Whether a park of these queue names takes from a queue that passes `test`.
local function takes_any(names, test)
  if #names == 0 then
    return true
  end
  for _, name in ipairs(names) do
    if test(name) then
      return true
    end
  end
  return false
end

-- Hand pending tasks to the parked workers, leased, as their own dequeue would
-- take them (best first, at most one per free slot), so a blocked worker gets a
-- task in one hop. A worker parks only when its queues had nothing ready, so
-- priority order holds. Tokens are `stamp` (fresh per call) .. '.' .. a counter.
-- A worker that got fewer than it could take emptied its queues: the walk stops
-- once every queue is known empty, so many idle workers cost a submit little.
local function feed(now, stamp)
  local handed, drained = 0, {}
  each_park(now, function(park)
    local names = park.names
    if not takes_any(names, function(name) return not drained[name] end) then
      return false
    end
    local ids = take(queue_names(names), park.want)
    local all_drained = false
    if #ids < park.want then
      all_drained = #names == 0
      for _, name in ipairs(names) do
        drained[name] = true
      end
    end
    if #ids > 0 then
      local tokens = {}
      for k = 1, #ids do
        tokens[k] = stamp .. '.' .. (handed + k)
      end
      handed = handed + #ids
      local expires, score = lease_until(now, park.seconds)
      local items = {}
      for k, found in ipairs(lease(ids, tokens, now, expires, score, park.worker)) do
        items[k] = inbox_item(tokens[k], expires, now, found[3], found[2], found[1])
      end
      deliver(park.worker, items)
    end
    count_off(park, #ids)
    return all_drained
  end)
end

-- End `worker`'s wait on its inbox, with nothing handed.
local function end_wait(worker)
  deliver(worker, {''})
end

-- Without a time to lease by, end the parked workers' waits instead: they dequeue.
local function nudge()
  for _, worker in ipairs(redis.call('HKEYS', PARKS)) do
    end_wait(worker)
  end
  redis.call('DEL', PARKS)
end

-- Tasks became pending in this call: parked workers take them now, leased at
-- `now` with tokens made of `stamp`; without a time, their waits end instead.
local function wake(now, stamp)
  if woke then
    if now then
      feed(now, stamp)
    else
      nudge()
    end
  end
end

-- `worker` blocks on its inbox until `until_`, and may be handed `slots` tasks.
local function park(worker, until_, lease_seconds, names, slots)
  local text = park_text(until_, lease_seconds, slots, table.concat(names, '\n'))
  redis.call('HSET', PARKS, worker, text)
end

-- Hand `worker` no more tasks; returns the tasks handed to it that it has not taken.
local function unpark(worker)
  redis.call('HDEL', PARKS, worker)
  local inbox = P .. 'inbox:' .. worker
  local found = redis.call('LRANGE', inbox, 0, -1)
  local items = {}
  for _, item in ipairs(found) do
    if item ~= '' then
      items[#items + 1] = item
    end
  end
  if #found > 0 then
    redis.call('DEL', inbox)
  end
  return items
end
