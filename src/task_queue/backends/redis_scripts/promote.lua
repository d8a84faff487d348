-- Make due scheduled and retrying tasks pending.
-- ARGV: [1] prefix, [2] now, [3] at most this many, [4] stamp for the new revs.
-- Returns how many.
local count = promote_due(ARGV[2], tonumber(ARGV[3]), ARGV[4])
wake(ARGV[2], ARGV[4])
return count
