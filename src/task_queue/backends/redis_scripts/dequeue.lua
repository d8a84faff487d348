-- Lease up to `limit` tasks to a worker: first those handed to it while it was
-- parked, then pending ones, best first across the named queues (or every queue
-- when none is named), after promoting due delayed tasks.
-- ARGV: [1] prefix, [2] now, [3] now as a score (lib.lua: whole microseconds),
-- [4] lease_expires_at, [5] it as a score, [6] worker id, [7] limit, [8] stamp (a
-- fresh random string, for the revs of promoted tasks and the tokens of tasks
-- handed to other parked workers), [9] lease seconds, [10] parked-until ('' = do
-- not park), [11] n = number of queue names, [12 .. 11+n] the names (distinct),
-- then `limit` fresh lease tokens.
-- With a parked-until, a call that finds nothing parks the worker (lib.lua: it
-- is then handed up to `limit` tasks as they become pending, in its inbox), and
-- one that finds tasks ends the wait its caller sent right behind it.
-- Returns {handed items (lib.lua's inbox format), {d, p, c} of each task leased
-- here in dequeue order (the caller knows the lease fields it sent), the run_at
-- (as a score) of the next delayed task when nothing was found ('' otherwise or
-- when none)}.
-- Cost: one call for the whole batch; per task an HSET and an HMGET, plus
-- ZPOPMIN (one per batch when one queue is named, else one per task and a
-- compare over the named queues' heads); promotion first is bounded to 1000.
local now, expires, score, worker = ARGV[2], ARGV[4], ARGV[5], ARGV[6]
local limit, stamp, until_, nq = tonumber(ARGV[7]), ARGV[8], ARGV[10], tonumber(ARGV[11])
local handed = unpark(worker)
promote_due(now, ARGV[3], 1000, stamp)
local names = {}
for i = 1, nq do
  names[i] = ARGV[11 + i]
end
local tokens = {}  -- a loop, not unpack: limit may pass Lua's unpack bound
for i = 1, limit do
  tokens[i] = ARGV[11 + nq + i]
end
local ids = take(queue_names(names), limit - #handed)
local taken = lease(ids, tokens, now, expires, score, worker)
wake(now, stamp)  -- promoted tasks this call did not take go to other parked workers
local due = ''
if #handed + #taken == 0 then
  due = redis.call('ZRANGE', P .. 'delayed', 0, 0, 'WITHSCORES')[2] or ''
  if until_ ~= '' then
    park(worker, until_, ARGV[9], names, limit)
  end
elseif until_ ~= '' then
  end_wait(worker)
end
return {handed, taken, due}
