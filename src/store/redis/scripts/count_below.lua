-- Count below: for a queue over several sub-lines, this sub-line's part
-- of each position, of the line's length and of the admission rate. A
-- position is the waiting tickets at or below one's own, summed over the
-- sub-lines.
-- KEYS: the sub-line's keys (prelude). ARGV: now, ticket...
-- Returns {'ok', in line, of them pre-queued or being drawn, the drawn
-- tickets held (above, through: prelude's `drawn_hold`), rate count, rate
-- span, recent admissions, abandonments, count at or below each ticket...}.

local count, span, recent, abandoned = rate_sample()
local prequeued = redis.call('ZCARD', K_PREQUEUE) + redis.call('ZCARD', K_POOL)
local above, through = drawn_hold(prequeued)
local out = { 'ok', redis.call('ZCARD', K_WAITING) + prequeued, prequeued, above, through, count,
  span, recent, abandoned }
for i = 2, #ARGV do
  out[#out + 1] = redis.call('ZCOUNT', K_WAITING, '-inf', ARGV[i])
end
return out
