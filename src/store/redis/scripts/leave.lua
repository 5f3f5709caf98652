-- Leave: give up a user's place or admission.
-- KEYS: the queue's keys (prelude). ARGV: now, user.
-- Returns 1 if the user was waiting or admitted, 0 if not, -1 if there is no
-- such queue. A second run finds nothing to give up.

local user = ARGV[2]
if not load_config() then
  return -1
end
expire_admissions()
if redis.call('ZREM', K_WAITING, user) == 1 or end_admission(user) then
  redis.call('HINCRBY', K_STATS, 'left', 1)
  return 1
end
return 0
