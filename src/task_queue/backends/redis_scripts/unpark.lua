-- A worker stops waiting for good: hand it no more tasks and end the wait it may
-- still be blocked in. ARGV: [1] prefix, [2] worker id.
-- Returns the tasks handed to it that it has not taken (lib.lua's inbox format),
-- for the worker to hand back.
local handed = unpark(ARGV[2])
end_wait(ARGV[2])
return handed
