-- Check admission: is the admission a genuine token names still held, and,
-- when consuming, mark the token used.
-- KEYS: the queue's keys (prelude), then the queue's used-token set (token
--       id -> remembered until, ms) and who used each (token id -> request).
-- ARGV: now, user, token id, queue epoch, ticket, admitted at ('' when the
--       token names none), consume (1/0), remembered until (ms), request id.
-- Returns {'ok', status}: 'held', 'used' (consumed before by another
-- request) or 'revoked'
-- (completed, left, expired, or the queue deleted or created again).
-- Safe to run twice: the request that consumed a token is told 'held'
-- again. Used ids outlive the queue; each is dropped once the caller's
-- clock passes its own time, and the keys themselves expire only after
-- the last of them.

local K_USED, K_USED_BY = KEYS[OWN], KEYS[OWN + 1]
local user, token, consume, request = ARGV[2], ARGV[3], ARGV[7] == '1', ARGV[9]

local lapsed = redis.call('ZRANGEBYSCORE', K_USED, '-inf', NOW)
if #lapsed > 0 then
  redis.call('ZREMRANGEBYSCORE', K_USED, '-inf', NOW)
  remove_all('HDEL', K_USED_BY, lapsed)
end
if consume and redis.call('ZSCORE', K_USED, token) then
  if redis.call('HGET', K_USED_BY, token) == request then
    return { 'ok', 'held' }
  end
  return { 'ok', 'used' }
end

local cfg = load_config()
if not cfg or cfg.epoch ~= tonumber(ARGV[4]) then
  return { 'ok', 'revoked' }
end
local record = redis.call('HGET', K_ADMITTED, user)
if not record then
  return { 'ok', 'revoked' }
end
local ticket, admitted_at, expires_at = string.match(record, '^(%d+):(%d+):(%d+)$')
if ticket ~= ARGV[5] or (ARGV[6] ~= '' and admitted_at ~= ARGV[6]) or tonumber(expires_at) <= NOW then
  return { 'ok', 'revoked' }
end

if consume then
  local remember_until = math.max(tonumber(ARGV[8]), NOW + 1)
  redis.call('ZADD', K_USED, remember_until, token)
  redis.call('HSET', K_USED_BY, token, request)
  -- The keys live as long as their longest-remembered id (plus a margin
  -- for callers' clocks ahead of Redis's), never shorter because the id
  -- consumed last expires sooner.
  local last = tonumber(redis.call('ZRANGE', K_USED, -1, -1, 'WITHSCORES')[2])
  local ttl = math.max(last - NOW, 1) + 60000
  redis.call('PEXPIRE', K_USED, ttl)
  redis.call('PEXPIRE', K_USED_BY, ttl)
end
return { 'ok', 'held' }
