-- Complete: end a user's admission, freeing the slot.
-- KEYS: the queue's keys (prelude). ARGV: now, user.
-- Returns {'ok', 1} if an active admission ended, {'ok', 0} if none, or
-- {'no_queue'}. A second run finds nothing to end.

local user = ARGV[2]
local cfg = load_config()
if not cfg then
  return { 'no_queue' }
end
prepare(cfg)
if end_admission(user) then
  redis.call('HINCRBY', K_STATS, 'completed', 1)
  return { 'ok', 1 }
end
return { 'ok', 0 }
