-- Record a worker as alive and extend the leases it still holds.
-- ARGV: [1] prefix, [2] worker id, [3] WorkerInfo JSON, [4] new lease expiry,
-- [5..] task id, token pairs. Returns {lost ids, ids whose cancel was asked}.
redis.call('HSET', P .. 'workers', ARGV[2], ARGV[3])
local expires = ARGV[4]
local lost, cancel = {}, {}
for i = 5, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local f = redis.call('HMGET', P .. 'task:' .. id, 'lease_token', 'cancel_requested')
  if f[1] ~= token then
    lost[#lost + 1] = id
  else
    write(id, {lease_expires_at = expires}, {})
    redis.call('ZADD', P .. 'leased', expires, id)
    if f[2] == '1' then
      cancel[#cancel + 1] = id
    end
  end
end
return {lost, cancel}
