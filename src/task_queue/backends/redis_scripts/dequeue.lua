-- Lease up to `limit` tasks to a worker: first those handed to it while it was
-- parked, then pending ones, best first across the named queues (or every queue
-- when none is named), after promoting due delayed tasks.
-- ARGV: [1] prefix, [2] now, [3] lease_expires_at, [4] its score in P..leased
-- (lib.lua's lease_until), [5] worker id, [6] limit, [7] stamp (a fresh random
-- string, for the revs of promoted tasks and the tokens of tasks handed to other
-- parked workers), [8] lease seconds, [9] parked-until ('' = do not park), [10] n =
-- number of queue names, [11 .. 10+n] the names (distinct), then `limit` fresh
-- lease tokens.
-- With a parked-until, a call that finds nothing parks the worker (lib.lua: it
-- is then handed up to `limit` tasks as they become pending, in its inbox), and
-- one that finds tasks ends the wait its caller sent right behind it.
-- Returns {handed items (lib.lua's inbox format), {d, p, c} of each task leased
-- here in dequeue order (the caller knows the lease fields it sent), the run_at
-- of the next delayed task when nothing was found ('' otherwise or when none)}.
-- Cost: one call for the whole batch; per task an HSET and an HMGET, plus
-- ZPOPMIN (one per batch when one queue is named, else one per task and a
-- compare over the named queues' heads); promotion first is bounded to 1000.
local now, expires, score, worker = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local limit, until_, nq = tonumber(ARGV[6]), ARGV[9], tonumber(ARGV[10])
local handed = unpark(worker)
promote_due(now, 1000, ARGV[7])
local names = {}
for i = 1, nq do
  names[i] = ARGV[10 + i]
end
local tokens = {}  -- a loop, not unpack: limit may pass Lua's unpack bound
for i = 1, limit do
  tokens[i] = ARGV[10 + nq + i]
end
local ids = take(queue_names(names), limit - #handed)
local taken = lease(ids, tokens, now, expires, score, worker)
wake(now, ARGV[7])  -- promoted tasks this call did not take go to other parked workers
local due = ''
if #handed + #taken == 0 then
  due = redis.call('ZRANGE', P .. 'delayed', 0, 0, 'WITHSCORES')[2] or ''
  if until_ ~= '' then
    park(worker, until_, ARGV[8], names, limit)
  end
elseif until_ ~= '' then
  end_wait(worker)
end
return {handed, taken, due}
