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
    local key = task_key(id)
    -- Read once per purged task, off the hot path: the type and key live only in d.
    local task = cjson.decode(redis.call('HGET', key, 'd'))
    redis.call('HINCRBY', COUNTS, 'type:' .. task.type, -1)
    local idem = task.idempotency_key
    if type(idem) == 'string' and redis.call('GET', P .. 'idem:' .. idem) == id then
      redis.call('DEL', P .. 'idem:' .. idem)
    end
    redis.call('DEL', key)
  end
  if #ids > 0 then
    each_chunk('ZREM', P .. 'final:' .. status, ids, 1)
    each_chunk('ZREM', P .. 'all', ids, 1)
  end
  count = count + #ids
end
return count
