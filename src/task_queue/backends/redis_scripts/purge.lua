-- Delete up to `limit` completed and cancelled tasks that finished before `before`,
-- with every index entry and idempotency key of theirs.
-- ARGV: [1] prefix, [2] before (exclusive), [3] limit. Returns how many.
local count = 0
for _, status in ipairs({'completed', 'cancelled'}) do
  local left = tonumber(ARGV[3]) - count
  if left <= 0 then
    break
  end
  local ids = redis.call('ZRANGEBYSCORE', P .. 'final:' .. status, '-inf', '(' .. ARGV[2],
    'LIMIT', 0, left)
  for _, id in ipairs(ids) do
    local key = P .. 'task:' .. id
    local f = redis.call('HMGET', key, 'type', 'idempotency_key')
    unindex(id, where(id))
    redis.call('HINCRBY', COUNTS, 'type:' .. f[1], -1)
    if f[2] and redis.call('GET', P .. 'idem:' .. f[2]) == id then
      redis.call('DEL', P .. 'idem:' .. f[2])
    end
    redis.call('ZREM', P .. 'all', id)
    redis.call('DEL', key)
    count = count + 1
  end
end
return count
