-- Admission front: a sub-line's part of planning an admission. Ends the
-- admissions whose time is up, then reads how many it holds admitted and
-- its lowest waiting tickets below the head's watermark.
-- KEYS: the sub-line's keys (prelude). ARGV: now, watermark, at most.
-- Returns {'ok', admitted now, ticket...} (ascending) or {'no_queue'}.

local cfg = load_config()
if not cfg then
  return { 'no_queue' }
end
prepare(cfg)
local out = { 'ok', redis.call('ZCARD', K_ACTIVE) }
local flat = redis.call('ZRANGEBYSCORE', K_WAITING, '-inf', '(' .. ARGV[2], 'WITHSCORES', 'LIMIT', 0,
  tonumber(ARGV[3]))
for i = 2, #flat, 2 do
  out[#out + 1] = tonumber(flat[i])
end
return out
