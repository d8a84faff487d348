-- Store a transition Python computed (finish, cancel, requeue) as a compare-and-set.
-- ARGV: [1] prefix, [2] id, [3] the rev the caller read, [4] lease token that must
-- still be held ('' = no lease check), [5] max_waiting ('' = unbounded), [6] JSON
-- of the fields to set, [7] JSON list of the fields that became None.
-- Returns 'ok', 'gone' (no such task), 'lost' (token no longer holds the lease),
-- 'stale' (written since the caller read it: read again and recompute) or 'full'.
local id = ARGV[2]
local cur = redis.call('HMGET', P .. 'task:' .. id, 'rev', 'lease_token')
if not cur[1] then
  return 'gone'
end
if ARGV[4] ~= '' and cur[2] ~= ARGV[4] then
  return 'lost'
end
if cur[1] ~= ARGV[3] then
  return 'stale'
end
local fields = cjson.decode(ARGV[6])
local old = where(id)
if ARGV[5] ~= '' and WAITING[fields.status] and not WAITING[old.status] then
  if waiting_count() + 1 > tonumber(ARGV[5]) then
    return 'full'
  end
end
unindex(id, old)
write(id, fields, cjson.decode(ARGV[7]))
index(id, where(id))
if FINAL[fields.status] and not FINAL[old.status] and fields.status ~= 'cancelled' then
  redis.call('HINCRBY', COUNTS, 'processed', 1)
  if fields.status == 'failed' then
    redis.call('HINCRBY', COUNTS, 'failed', 1)
  end
end
wake()
return 'ok'
