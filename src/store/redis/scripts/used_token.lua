-- Used token: a consumed token id of a queue over sub-lines, kept under the
-- queue's own tag (as a one-slot queue keeps them, check_admission.lua)
-- while the admission it names is checked in its holder's sub-line.
-- KEYS: the queue's used-token set (token id -> remembered until, ms) and
-- who used each (token id -> request).
-- ARGV: now, step ('seen' or 'record'), token id, request id, remembered
-- until (ms).
-- 'seen' returns {'ok', 'held'} when this request consumed the token
-- before, {'ok', 'used'} when another did, else {'ok', 'none'}; 'record'
-- marks it consumed by this request unless one consumed it first, and
-- answers 'held' or 'used' the same way.

local K_USED, K_USED_BY = KEYS[1], KEYS[2]
local now, step, token, request = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
local lapsed = redis.call('ZRANGEBYSCORE', K_USED, '-inf', now)
if #lapsed > 0 then
  redis.call('ZREMRANGEBYSCORE', K_USED, '-inf', now)
  for i = 1, #lapsed, 1000 do
    redis.call('HDEL', K_USED_BY, unpack(lapsed, i, math.min(i + 999, #lapsed)))
  end
end
if redis.call('ZSCORE', K_USED, token) then
  if redis.call('HGET', K_USED_BY, token) == request then
    return { 'ok', 'held' }
  end
  return { 'ok', 'used' }
end
if step == 'seen' then
  return { 'ok', 'none' }
end
local remember_until = math.max(tonumber(ARGV[5]), now + 1)
redis.call('ZADD', K_USED, remember_until, token)
redis.call('HSET', K_USED_BY, token, request)
local last = tonumber(redis.call('ZRANGE', K_USED, -1, -1, 'WITHSCORES')[2])
local ttl = math.max(last - now, 1) + 60000
redis.call('PEXPIRE', K_USED, ttl)
redis.call('PEXPIRE', K_USED_BY, ttl)
return { 'ok', 'held' }
