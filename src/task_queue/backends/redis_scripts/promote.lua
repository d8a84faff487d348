-- Make due scheduled and retrying tasks pending.
-- ARGV: [1] prefix, [2] now, [3] now as a score (lib.lua: whole microseconds),
-- [4] at most this many, [5] stamp for the new revs. Returns how many.
local count = promote_due(ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5])
wake(ARGV[2], ARGV[5])
return count
