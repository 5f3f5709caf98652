-- Stats: a queue's gauges and counters.
-- KEYS: the queue's keys (prelude). ARGV: now.
-- Returns {'ok', in line, active, enqueued, admitted, completed, expired,
-- left, abandoned, pre-queued, rate count, rate span, cleared}, or
-- {'no_queue'}.

local cfg = load_config()
if not cfg then
  return { 'no_queue' }
end
prepare(cfg)
local c = redis.call('HMGET', K_STATS, 'enqueued', 'admitted', 'completed', 'expired', 'left', 'abandoned',
  'cleared')
local count, span = rate_sample()
return { 'ok', in_line(cfg), redis.call('ZCARD', K_ACTIVE),
  tonumber(c[1]) or 0, tonumber(c[2]) or 0, tonumber(c[3]) or 0, tonumber(c[4]) or 0,
  tonumber(c[5]) or 0, tonumber(c[6]) or 0,
  redis.call('ZCARD', K_PREQUEUE) + redis.call('ZCARD', K_POOL), count, span, tonumber(c[7]) or 0 }
