-- Lease up to `limit` tasks to a worker: first those handed to it while it was
-- parked, then pending ones, best first across the named queues (or every queue
-- when none is named), after promoting due delayed tasks.
-- ARGV: [1] prefix, [2] now, [3] lease_expires_at, [4] worker id, [5] limit,
-- [6] stamp (a fresh random string, for the revs of promoted tasks and the tokens
-- of tasks handed to other parked workers), [7] lease seconds, [8] parked-until
-- ('' = do not park), [9] n = number of queue names, [10 .. 9+n] the names
-- (distinct), then `limit` fresh lease tokens.
-- With a parked-until, a call that finds nothing parks the worker (lib.lua: it
-- is then handed up to `limit` tasks as they become pending, in its inbox), and
-- one that finds tasks ends the wait its caller sent right behind it.
-- Returns {handed items (lib.lua's inbox format), {d, p, c} of each task leased
-- here in dequeue order (the caller knows the lease fields it sent), the run_at
-- of the next delayed task when nothing was found ('' otherwise or when none)}.
-- Cost: one call for the whole batch; per task an HSET and an HMGET, plus
-- ZPOPMIN (one per batch when one queue is named, else one per task and a
-- compare over the named queues' heads); promotion first is bounded to 1000.
local now, expires, worker = ARGV[2], ARGV[3], ARGV[4]
local limit, until_, nq = tonumber(ARGV[5]), ARGV[8], tonumber(ARGV[9])
local handed = unpark(worker)
promote_due(now, 1000, ARGV[6])
local names = {}
for i = 1, nq do
  names[i] = ARGV[9 + i]
end
local tokens = {}  -- a loop, not unpack: limit may pass Lua's unpack bound
for i = 1, limit do
  tokens[i] = ARGV[9 + nq + i]
end
local taken = lease(take(queue_names(names), limit - #handed), tokens, now, expires, worker)
wake(now, ARGV[6])  -- promoted tasks this call did not take go to other parked workers
local due = ''
if #handed + #taken == 0 then
  due = redis.call('ZRANGE', P .. 'delayed', 0, 0, 'WITHSCORES')[2] or ''
  if until_ ~= '' then
    park(worker, until_, ARGV[7], names, limit)
  end
elseif until_ ~= '' then
  end_wait(worker)
end
return {handed, taken, due}
