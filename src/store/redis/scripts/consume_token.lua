-- Consume token: accept a token id once, until the token expires.
-- KEYS: the queue's keys (prelude), then the queue's used-token set.
-- ARGV: now, token id, token expiry (ms).
-- Returns 1 the first time, 0 when the id was used before. Expiry follows
-- the caller's clock like everything else; ids of expired tokens are
-- dropped as they pass. Not tied to the queue's existence: a token stays
-- used when its queue is deleted.

local K_USED = KEYS[14]
redis.call('ZREMRANGEBYSCORE', K_USED, '-inf', NOW)
if redis.call('ZSCORE', K_USED, ARGV[2]) then
  return 0
end
local expires = math.max(tonumber(ARGV[3]), NOW + 1)
redis.call('ZADD', K_USED, expires, ARGV[2])
-- Collect the whole set once its last token has expired, whatever clock
-- the callers keep.
redis.call('PEXPIRE', K_USED, math.max(expires - NOW, 1) + 60000)
return 1
