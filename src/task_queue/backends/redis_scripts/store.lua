-- Store a transition Python computed (cancel, requeue) as a compare-and-set.
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
if ARGV[5] ~= '' and WAITING[fields.status] then
  local status = redis.call('HGET', P .. 'task:' .. id, 'status')
  if not WAITING[status] and waiting_count() + 1 > tonumber(ARGV[5]) then
    return 'full'
  end
end
settle(id, fields, cjson.decode(ARGV[7]))
wake()
return 'ok'
