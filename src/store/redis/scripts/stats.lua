-- Stats: a queue's gauges and counters.
-- KEYS: the queue's keys (prelude). ARGV: now.
-- Returns {'ok', waiting, active, enqueued, admitted, completed, expired,
-- left, rate count, rate span}, or {'no_queue'}.

if not load_config() then
  return { 'no_queue' }
end
expire_admissions()
local c = redis.call('HMGET', K_STATS, 'enqueued', 'admitted', 'completed', 'expired', 'left')
local count, span = rate_sample()
return { 'ok', redis.call('ZCARD', K_WAITING), redis.call('ZCARD', K_ACTIVE),
  tonumber(c[1]) or 0, tonumber(c[2]) or 0, tonumber(c[3]) or 0, tonumber(c[4]) or 0,
  tonumber(c[5]) or 0, count, span }
