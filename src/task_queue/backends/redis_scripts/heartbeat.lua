-- Record a worker as alive and extend the leases it still holds.
-- ARGV: [1] prefix, [2] worker id, [3] WorkerInfo JSON, [4] new lease expiry,
-- [5] it as a score (lib.lua: whole microseconds), [6..] task id, token pairs.
-- Returns {lost ids, ids whose cancel was asked}.
redis.call('HSET', P .. 'workers', ARGV[2], ARGV[3])
local expires, score = ARGV[4], ARGV[5]
local lost, cancel, leased = {}, {}, {}
for i = 6, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local key = task_key(id)
  local f = redis.call('HMGET', key, 'l', 'c')
  if f[1] ~= token then
    lost[#lost + 1] = id
  else
    redis.call('HSET', key, 'x', expires)
    leased[#leased + 1] = score
    leased[#leased + 1] = id
    if f[2] == '1' then
      cancel[#cancel + 1] = id
    end
  end
end
if #leased > 0 then
  each_chunk('ZADD', P .. 'leased', leased, 2)
end
return {lost, cancel}
