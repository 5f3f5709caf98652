-- Head sample: the admission rate of a queue over sub-lines, which its
-- head counts (admission_head.lua), for the places and summaries its
-- sub-lines answer.
-- KEYS: the head's keys (prelude). ARGV: now.
-- Returns {'ok', rate count, rate span, recent admissions, abandonments,
-- admissions counted} or {'no_queue'}.

if redis.call('EXISTS', K_CONFIG) == 0 then
  return { 'no_queue' }
end
local count, span, recent, abandoned = rate_sample()
return { 'ok', count, span, recent, abandoned,
  tonumber(redis.call('HGET', K_STATS, 'admitted')) or 0 }
