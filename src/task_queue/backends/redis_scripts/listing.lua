-- The tasks of one status, newest first by submit sequence, read from that
-- status's own index instead of P..all (list_tasks in redis.py).
-- ARGV: [1] prefix, [2] status, [3] queue ('' = every queue), [4] below: only
-- sequences under it ('' = no bound), [5] most: an index holding more tasks
-- than this answers false, [6] count: how many to return at most.
-- Returns false, or {id1, seq1, id2, seq2, ...} by sequence, highest first.
-- Cost: a sort, and an HMGET per task of any index but the ready sets (whose
-- members carry the sequence), so `most` bounds how long a call holds Redis.
local status, queue = ARGV[2], ARGV[3]
local below, most, count = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])

local keys = {}
if status == 'pending' then
  for _, name in ipairs(queue ~= '' and {queue} or all_queues()) do
    keys[#keys + 1] = P .. 'ready:' .. name
  end
elseif DELAYED[status] then
  keys[1] = P .. 'delayed'
elseif status == 'running' then
  keys[1] = P .. 'leased'
else
  keys[1] = P .. 'final:' .. status
end

local size = 0
for _, key in ipairs(keys) do
  size = size + redis.call('ZCARD', key)
end
if size > most then
  return false
end

-- {seq, id, seq as stored} of an index entry of the status asked, or nil.
local function read(entry)
  if status == 'pending' then  -- a ready member, which carries the sequence
    local id, bar = member_id(entry)
    local text = string.sub(entry, bar - 16, bar - 1)
    return {tonumber(text), id, text}
  end
  local f = redis.call('HMGET', task_key(entry), 's', 'q', 'seq')
  if f[1] == status and (queue == '' or f[2] == queue) and f[3] then
    return {tonumber(f[3]), entry, f[3]}
  end
end

local found = {}
for _, key in ipairs(keys) do
  for _, entry in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    local task = read(entry)
    if task and (below == nil or task[1] < below) then
      found[#found + 1] = task
    end
  end
end
table.sort(found, function(a, b) return a[1] > b[1] end)
local answer = {}
for i = 1, math.min(count, #found) do
  answer[#answer + 1] = found[i][2]
  answer[#answer + 1] = found[i][3]
end
return answer
