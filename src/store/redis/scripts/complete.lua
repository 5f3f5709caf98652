-- Complete: end a user's admission, freeing the slot.
-- KEYS: the queue's keys (prelude). ARGV: now, user.
-- Returns 1 if an active admission ended, 0 if none, -1 if there is no such
-- queue. A second run finds nothing to end.

local user = ARGV[2]
local cfg = load_config()
if not cfg then
  return -1
end
prepare(cfg)
if end_admission(user) then
  redis.call('HINCRBY', K_STATS, 'completed', 1)
  return 1
end
return 0
