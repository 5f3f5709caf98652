-- Leave: give up a user's place (waiting or pre-queued) or admission.
-- KEYS: the queue's keys (prelude). ARGV: now, user.
-- Returns {'ok', 1} if the user was in line or admitted, {'ok', 0} if not,
-- or {'no_queue'}. A second run finds nothing to give up.

local user = ARGV[2]
local cfg = load_config()
if not cfg then
  return { 'no_queue' }
end
prepare(cfg)
if remove_from_line(cfg, user) or end_admission(user) then
  redis.call('HINCRBY', K_STATS, 'left', 1)
  return { 'ok', 1 }
end
return { 'ok', 0 }
