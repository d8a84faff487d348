-- Store new tasks, all or none: idempotency keys, the waiting bound, indexes.
-- ARGV: [1] prefix, [2] max_waiting, [3..] one JSON object per task mapping each
-- non-None Task field to its encoded string (plus rank), as redis.py encodes it.
-- Returns {'ok', {r1, r2, ...}} where r is {} for a created task, else the HGETALL
-- of the task stored first under its key; {'conflict', key}; or {'full', waiting}.
local max_waiting = tonumber(ARGV[2])
local docs, results, seen, fresh = {}, {}, {}, 0
for i = 3, #ARGV do
  local t = cjson.decode(ARGV[i])
  docs[#docs + 1] = t
  local key = t.idempotency_key
  local first = nil
  if key then
    first = seen[key]  -- a key repeated in this batch counts like a stored one
    if not first then
      local id = redis.call('GET', P .. 'idem:' .. key)
      if id then
        first = {id = id, hash = redis.call('HGET', P .. 'task:' .. id, 'request_hash') or ''}
      end
    end
  end
  if first then
    if first.hash ~= (t.request_hash or '') then
      return {'conflict', key}
    end
    results[#results + 1] = first.id
  else
    results[#results + 1] = ''
    fresh = fresh + 1
    if key then
      seen[key] = {id = t.id, hash = t.request_hash or ''}
    end
  end
end
local waiting = waiting_count()
if waiting + fresh > max_waiting then
  return {'full', tostring(waiting)}
end
for i, t in ipairs(docs) do
  if results[i] == '' then
    local seq = redis.call('HINCRBY', COUNTS, 'seq', 1)
    t.seq = tostring(seq)
    t.rev = '0'
    write(t.id, t, {})
    redis.call('ZADD', P .. 'all', seq, t.id)
    redis.call('SADD', P .. 'queues', t.queue)
    redis.call('HINCRBY', COUNTS, 'type:' .. t.type, 1)
    if t.idempotency_key then
      redis.call('SET', P .. 'idem:' .. t.idempotency_key, t.id)
    end
    index(t.id, where(t.id))
  end
end
local answers = {}
for i, first in ipairs(results) do
  answers[i] = first == '' and {} or redis.call('HGETALL', P .. 'task:' .. first)
end
wake()
return {'ok', answers}
