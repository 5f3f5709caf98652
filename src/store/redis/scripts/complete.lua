-- Complete: end a user's admission, freeing the slot.
-- KEYS: the queue's keys (prelude). ARGV: now, user.
-- Returns 1 if an active admission ended, 0 if none, -1 if there is no such
-- queue. A second run finds nothing to end.

local user = ARGV[2]
if not load_config() then
  return -1
end
expire_admissions()
if end_admission(user) then
  redis.call('HINCRBY', K_STATS, 'completed', 1)
  return 1
end
return 0
