-- Promote due delayed tasks, then lease up to `limit` pending tasks, best first
-- across the named queues (or every queue when none is named).
-- ARGV: [1] prefix, [2] now, [3] lease_expires_at, [4] worker id, [5] limit,
-- [6] stamp (a fresh random string, for the revs of promoted tasks), [7] n =
-- number of queue names, [8 .. 7+n] the names (distinct), then `limit` fresh
-- lease tokens. The lease is the small fields l, x, w, n (see lib.lua); the
-- reader turns them into Task.leased()'s running task with one more attempt.
-- Returns {d, p, c} of each leased task, in dequeue order (the caller knows the
-- lease fields it sent). Cost: one call for the whole batch; per task an HSET and an HMGET,
-- plus ZPOPMIN (one per batch when one queue is named, else one per task and a
-- compare over the named queues' heads); promotion first is bounded to 1000.
local now, expires, worker = ARGV[2], ARGV[3], ARGV[4]
local limit, nq = tonumber(ARGV[5]), tonumber(ARGV[7])
promote_due(now, 1000, ARGV[6])
local queues = {}
if nq == 0 then
  queues = redis.call('SMEMBERS', P .. 'queues')
else
  for i = 1, nq do
    queues[i] = ARGV[7 + i]
  end
end
local popped = {}
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
local taken, leased = {}, {}
for i, entry in ipairs(popped) do
  local id = string.sub(entry, string.find(entry, '|', 1, true) + 1)
  local key, token = task_key(id), ARGV[7 + nq + i]
  redis.call('HSET', key, 's', 'running', 'l', token, 'x', expires, 'w', worker, 'n', now,
    'u', now, 'rev', token)
  taken[i] = redis.call('HMGET', key, 'd', 'p', 'c')
  leased[#leased + 1] = expires
  leased[#leased + 1] = id
end
if #leased > 0 then
  each_chunk('ZADD', P .. 'leased', leased, 2)
end
wake()  -- promoted tasks this call did not take are there for idle workers
return taken
