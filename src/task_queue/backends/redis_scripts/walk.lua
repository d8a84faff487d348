-- One stretch of the walk over every task, newest first by submit sequence, for a
-- list whose filters no index answers (list_tasks in redis.py). The filters are
-- matched here, so the tasks they rule out never travel to the client: status and
-- queue on the small fields, the type by its text in the document (a payload may
-- hold that text too: the client matches the decoded task again).
-- ARGV: [1] prefix, [2] status ('' = any), [3] queue ('' = any), [4] type ('' =
-- any), [5] the type's text as the document holds it, [6] below: only sequences
-- under it ('' = no bound), [7] how many tasks of P..all to look at, [8] how many
-- bytes of documents to search at most: the stretch ends early past them.
-- Returns {ended, lowest, id1, seq1, id2, seq2, ...}: ended is 1 when the walk
-- passed the oldest task, or no task of the type is kept (its counter is 0);
-- lowest, the lowest sequence looked at (0 when none); then the tasks that match,
-- highest sequence first.
-- Cost: an HMGET per task looked at when a status or queue is asked, an HGET of
-- the document when a type is, so the caller's two bounds bound the call.
local status, queue, kind, named = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if kind ~= '' and tonumber(redis.call('HGET', COUNTS, 'type:' .. kind) or '0') <= 0 then
  return {1, 0}  -- a mistyped or long-gone type: nothing to walk past
end
local top = ARGV[6] == '' and '+inf' or '(' .. ARGV[6]
local count, bytes = tonumber(ARGV[7]), tonumber(ARGV[8])
local flat = redis.call('ZREVRANGEBYSCORE', P .. 'all', top, '-inf', 'WITHSCORES',
  'LIMIT', 0, count)
local answer = {#flat / 2 < count and 1 or 0, 0}
local searched = 0
for i = 1, #flat, 2 do
  local key = task_key(flat[i])
  local keep = true
  if status ~= '' or queue ~= '' then
    local f = redis.call('HMGET', key, 's', 'q')
    keep = (status == '' or f[1] == status) and (queue == '' or f[2] == queue)
  end
  if keep and kind ~= '' then
    local doc = redis.call('HGET', key, 'd') or ''
    searched = searched + #doc
    keep = string.find(doc, named, 1, true) ~= nil
  end
  answer[2] = flat[i + 1]
  if keep then
    answer[#answer + 1] = flat[i]
    answer[#answer + 1] = flat[i + 1]
  end
  if searched >= bytes and i + 1 < #flat then
    answer[1] = 0  -- tasks were left unlooked at: not the end
    break
  end
end
return answer
