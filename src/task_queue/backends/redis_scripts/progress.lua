-- Store a running task's progress if the token still holds its lease.
-- ARGV: [1] prefix, [2] id, [3] token, [4] progress JSON, [5] now.
-- Returns 1 when stored, 0 when the lease is lost.
local key = task_key(ARGV[2])
if redis.call('HGET', key, 'l') ~= ARGV[3] then
  return 0
end
redis.call('HSET', key, 'p', ARGV[4], 'u', ARGV[5])
return 1
