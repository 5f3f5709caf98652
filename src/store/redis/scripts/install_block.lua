-- Install block: a block of tickets leased from the head (lease.lua) for
-- this sub-line, unless it already holds a later one (another replica's
-- lease that came first): a block never installed is a gap in the
-- numbers, which changes no position.
-- KEYS: the sub-line's keys (prelude). ARGV: now, first ticket, end (the
-- first ticket after it), leased at (ms, the leasing replica's clock read
-- before it asked).
-- Returns {'ok', 1} if installed, {'ok', 0} if not, or {'no_queue'}.

if redis.call('EXISTS', K_CONFIG) == 0 then
  return { 'no_queue' }
end
local first = tonumber(ARGV[2])
local held = tonumber(redis.call('HGET', K_CONFIG, 'block_first'))
if held and held >= first then
  return { 'ok', 0 }
end
redis.call('HSET', K_CONFIG, 'block_first', first, 'block_next', first, 'block_end', ARGV[3],
  'block_ms', ARGV[4])
return { 'ok', 1 }
