-- Take one token from a client's bucket: the HTTP API's rate limit, shared by
-- every API process on this prefix.
-- ARGV: [1] prefix, [2] client id (never a raw API key: the caller hashes it),
-- [3] rate in tokens per second, [4] burst (the bucket's size).
--
--   P..rate:<client>   hash    t = tokens left, a = when t was computed (seconds);
--                              expires once it would have refilled, since a
--                              missing bucket is a full one
--
-- Time comes from Redis TIME here, unlike in every other script: API processes
-- on different machines age one bucket, and their clocks may disagree by more
-- than a token's worth; Redis's clock is the one they share. Nothing here is a
-- task's time, so no test needs to move it.
-- Returns {1 if taken else 0, tokens left, seconds until the next token}; the
-- numbers as strings, since Redis would truncate Lua numbers to integers.

local key = P .. 'rate:' .. ARGV[2]
local rate, burst = tonumber(ARGV[3]), tonumber(ARGV[4])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local stored = redis.call('HMGET', key, 't', 'a')
local tokens = burst
if stored[1] then
  tokens = math.min(burst, tonumber(stored[1]) + math.max(0, now - tonumber(stored[2])) * rate)
end
if tokens < 1 then
  -- Nothing written: the stored state refills to the same tokens by itself.
  return {0, tostring(tokens), tostring((1 - tokens) / rate)}
end
tokens = tokens - 1
redis.call('HSET', key, 't', tostring(tokens), 'a', tostring(now))
redis.call('PEXPIRE', key, math.ceil((burst - tokens) / rate * 1000) + 1000)
return {1, tostring(tokens), '0'}
