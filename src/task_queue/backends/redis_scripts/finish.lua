-- Store a worker's outcome for a task it holds the lease on, in one call, applying
-- Task.settled_over (task.py, the single definition of the rule) to the stored task:
--   * a cancel asked while the task ran (stored cancel_requested = 1) turns an
--     outcome that is not final into the cancelled variant Python sends along;
--   * only the fields given are written and `progress` is never deleted, so a
--     stored progress stays unless the outcome carries one.
-- ARGV: [1] prefix, [2] id, [3] lease token that must still hold the lease,
-- [4] JSON of the outcome's fields, [5] JSON list of its fields that are None
-- (without progress), [6] and [7] the same for the cancelled variant ('' when the
-- outcome is final). Returns 1 when stored, 0 when the token lost the lease.
local id = ARGV[2]
local cur = redis.call('HMGET', P .. 'task:' .. id, 'lease_token', 'cancel_requested')
if cur[1] ~= ARGV[3] then
  return 0
end
local fields, deletes = cjson.decode(ARGV[4]), ARGV[5]
if cur[2] == '1' and not FINAL[fields.status] and ARGV[6] ~= '' then
  fields, deletes = cjson.decode(ARGV[6]), ARGV[7]
end
settle(id, fields, cjson.decode(deletes))
wake()
return 1
