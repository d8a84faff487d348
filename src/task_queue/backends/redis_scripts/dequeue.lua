-- Promote due delayed tasks, then lease up to `limit` pending tasks, best first
-- across the named queues (or every queue when none is named).
-- ARGV: [1] prefix, [2] now, [3] lease_expires_at, [4] worker id, [5] limit,
-- [6] n = number of queue names, [7 .. 6+n] the names (distinct), then `limit`
-- fresh lease tokens. The lease mirrors Task.leased(): running, attempts + 1,
-- started_at = updated_at = now, token, expiry and worker set.
-- Returns one HGETALL array per leased task, in dequeue order.
-- Cost: one call for the whole batch; per task taken O(log n) (ZRANGE 0 0 and
-- ZREM on the ready zset, ZADD on leased) plus a compare over the named queues'
-- heads; promotion first is bounded to 1000 due tasks.
local now, expires, worker = ARGV[2], ARGV[3], ARGV[4]
local limit, nq = tonumber(ARGV[5]), tonumber(ARGV[6])
promote_due(now, 1000)
local queues = {}
if nq == 0 then
  queues = redis.call('SMEMBERS', P .. 'queues')
else
  for i = 1, nq do
    queues[i] = ARGV[6 + i]
  end
end
local function head(queue)
  return redis.call('ZRANGE', P .. 'ready:' .. queue, 0, 0)[1]
end
local heads = {}
for i, queue in ipairs(queues) do
  heads[i] = head(queue)
end
local taken = {}
while #taken < limit do
  local best = nil
  for i = 1, #queues do
    if heads[i] and (best == nil or heads[i] < heads[best]) then
      best = i
    end
  end
  if best == nil then
    break
  end
  local member = heads[best]
  local id = string.sub(member, string.find(member, '|', 1, true) + 1)
  unindex(id, where(id))
  heads[best] = head(queues[best])
  local key = P .. 'task:' .. id
  write(id, {status = 'running', started_at = now, updated_at = now,
             lease_token = ARGV[7 + nq + #taken], lease_expires_at = expires,
             worker_id = worker}, {})
  redis.call('HINCRBY', key, 'attempts', 1)
  index(id, where(id))
  taken[#taken + 1] = redis.call('HGETALL', key)
end
return taken
