-- Stats: a queue's gauges and counters.
-- KEYS: the queue's keys (prelude). ARGV: now.
-- Returns {'ok', in line, active, enqueued, admitted, completed, expired,
-- left, abandoned, pre-queued, rate count, rate span, cleared, recent
-- admissions, abandonments in the window, configured rate, arrivals in the
-- window, admissions of the last five minutes per bucket of time waited
-- (one number per bucket)}, or {'no_queue'}.

local cfg = load_config()
if not cfg then
  return { 'no_queue' }
end
prepare(cfg)
local c = redis.call('HMGET', K_STATS, 'enqueued', 'admitted', 'completed', 'expired', 'left', 'abandoned',
  'cleared')
local count, span, recent, abandoned = rate_sample()
local out = { 'ok', in_line(cfg), redis.call('ZCARD', K_ACTIVE),
  tonumber(c[1]) or 0, tonumber(c[2]) or 0, tonumber(c[3]) or 0, tonumber(c[4]) or 0,
  tonumber(c[5]) or 0, tonumber(c[6]) or 0,
  redis.call('ZCARD', K_PREQUEUE) + redis.call('ZCARD', K_POOL), count, span, tonumber(c[7]) or 0,
  recent, abandoned, cfg.rate, in_window('j') }
local waited = {}
for i = 1, #WAITED_BOUNDS_S do
  waited[i] = 0
end
local slot = math.floor(NOW / WAITED_SLOT_MS)
local oldest = slot - (WAITED_WINDOW_MS / WAITED_SLOT_MS - 1)
local flat = redis.call('HGETALL', K_FLOW)
for i = 1, #flat, 2 do
  local at, bucket = string.match(flat[i], '^w:(%d+):(%d+)$')
  if at and tonumber(at) >= oldest and tonumber(at) <= slot then
    waited[tonumber(bucket) + 1] = waited[tonumber(bucket) + 1] + tonumber(flat[i + 1])
  end
end
for i = 1, #waited do
  out[#out + 1] = waited[i]
end
return out
