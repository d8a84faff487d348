-- Delete up to `limit` completed and cancelled tasks that finished before `before`,
-- with every index entry and idempotency key of theirs.
-- ARGV: [1] prefix, [2] before (exclusive; a score, lib.lua: whole microseconds),
-- [3] limit, [4] bytes: the call ends once it has decoded this many bytes of
-- documents (after one at least).
-- Returns {how many, 1 when a bound ended the call (more may be due) else 0}.
-- Cost: a JSON decode of each purged task's document, whose size the payload and
-- result decide: `bytes` bounds how long a call holds Redis when they are big.
local limit, bytes = tonumber(ARGV[3]), tonumber(ARGV[4])
local count, decoded = 0, 0
for _, status in ipairs({'completed', 'cancelled'}) do
  if count >= limit or decoded >= bytes then
    break
  end
  local ids = redis.call('ZRANGEBYSCORE', P .. 'final:' .. status, '-inf', '(' .. ARGV[2],
    'LIMIT', 0, limit - count)
  local purged = {}
  for _, id in ipairs(ids) do
    if decoded >= bytes then
      break
    end
    local key = task_key(id)
    -- Read once per purged task, off the hot path: the type and key live only in d.
    local doc = redis.call('HGET', key, 'd')
    decoded = decoded + #doc
    local task = cjson.decode(doc)
    redis.call('HINCRBY', COUNTS, 'type:' .. task.type, -1)
    local idem = task.idempotency_key
    if type(idem) == 'string' and redis.call('GET', P .. 'idem:' .. idem) == id then
      redis.call('DEL', P .. 'idem:' .. idem)
    end
    redis.call('DEL', key)
    purged[#purged + 1] = id
  end
  if #purged > 0 then
    each_chunk('ZREM', P .. 'final:' .. status, purged, 1)
    each_chunk('ZREM', P .. 'all', purged, 1)
  end
  count = count + #purged
end
return {count, (count >= limit or decoded >= bytes) and 1 or 0}
