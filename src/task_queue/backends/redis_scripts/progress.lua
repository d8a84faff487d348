-- Store a running task's progress if the token still holds its lease.
-- ARGV: [1] prefix, [2] id, [3] token, [4] progress JSON ('' = None), [5] now.
-- Returns 1 when stored, 0 when the lease is lost.
local key = P .. 'task:' .. ARGV[2]
if redis.call('HGET', key, 'lease_token') ~= ARGV[3] then
  return 0
end
if ARGV[4] == '' then
  write(ARGV[2], {updated_at = ARGV[5]}, {'progress'})
else
  write(ARGV[2], {progress = ARGV[4], updated_at = ARGV[5]}, {})
end
return 1
