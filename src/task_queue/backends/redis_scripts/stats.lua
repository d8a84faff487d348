-- One consistent snapshot for GET /stats: tasks per status, the counters, and
-- how many finished since `horizon`.
-- ARGV: [1] prefix, [2] horizon (a score, lib.lua: whole microseconds). Returns
-- {status/count pairs, HGETALL of counts, completed since horizon, failed since
-- horizon, queue/pending pairs}.
local pending, by_queue = 0, {}
for _, queue in ipairs(redis.call('SMEMBERS', P .. 'queues')) do
  local count = redis.call('ZCARD', P .. 'ready:' .. queue)
  pending = pending + count
  if count > 0 then
    by_queue[#by_queue + 1] = queue
    by_queue[#by_queue + 1] = count
  end
end
local c = redis.call('HMGET', COUNTS, 'status:scheduled', 'status:retrying')
local statuses = {
  'pending', pending,
  'scheduled', tonumber(c[1]) or 0,
  'retrying', tonumber(c[2]) or 0,
  'running', redis.call('ZCARD', P .. 'leased'),
}
for status in pairs(FINAL) do
  statuses[#statuses + 1] = status
  statuses[#statuses + 1] = redis.call('ZCARD', P .. 'final:' .. status)
end
return {
  statuses,
  redis.call('HGETALL', COUNTS),
  redis.call('ZCOUNT', P .. 'final:completed', ARGV[2], '+inf'),
  redis.call('ZCOUNT', P .. 'final:failed', ARGV[2], '+inf'),
  by_queue,
}
