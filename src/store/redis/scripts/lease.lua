-- Lease: a block of tickets for a sub-line, from the head's sequence, after
-- every ticket leased before. The head keeps the leases of the last
-- TAU_MS + SKEW_MS, whose first tickets bound what admission may take
-- (domain::shards::Head::watermark).
-- KEYS: the head's keys (prelude), then its leases (a sorted set of
-- 'first:leased at' scored by first ticket). ARGV: now (the leasing
-- replica's clock, read before it asked), size, and, for a resync, the
-- highest ticket any sub-line's block reaches, then each sub-line's block
-- still open as first, leased at.
-- Returns {'ok', first ticket, the head's history@the queue's epoch}
-- ({'ok', 0} for a size of 0), {'resync'} or {'no_queue'}; OPENING when a
-- scheduled opening is due and not made.
-- A lease in another history than the head's last (prelude.lua,
-- `same_history`) is refused with 'resync' until the caller has read every
-- sub-line's block and passed them here; a size of 0 then only resyncs.

if redis.call('EXISTS', K_CONFIG) == 0 then
  return { 'no_queue' }
end
local same, history = same_history()
if not same then
  local reached = tonumber(ARGV[3] or '')
  if not reached then
    return { 'resync' }
  end
  if reached > (tonumber(redis.call('GET', K_SEQ)) or 0) then
    redis.call('SET', K_SEQ, reached)
  end
  -- A block still open holds the watermark back as its lease did.
  for i = 4, #ARGV - 1, 2 do
    redis.call('ZADD', KEYS[OWN], ARGV[i], ARGV[i] .. ':' .. ARGV[i + 1])
  end
  redis.call('HSET', K_CONFIG, 'head_history', history)
end
if tonumber(ARGV[2]) == 0 then
  return { 'ok', 0 }
end
-- At a scheduled opening nothing is leased until the head has reserved
-- the drawn tickets (draw_head.lua, 'open'): nobody who joins after it
-- may stand ahead of someone drawn.
local opening = redis.call('HMGET', K_CONFIG, 'draw', 'opens_at_ms')
open_head_first(opening[1], opening[2])
local size = math.max(tonumber(ARGV[2]), 1)
local first = redis.call('INCRBY', K_SEQ, size) - size + 1
local leases = KEYS[OWN]
-- In full: Lua writes a number past 10^14 as an exponent.
redis.call('ZADD', leases, first, string.format('%d', first) .. ':' .. ARGV[1])
-- Leases are dropped by the admission's watermark once past τ + ε by its
-- clock; here only those a minute old, so the set stays small when nobody
-- admits, and a caller whose clock is behind still finds every lease
-- admission may have to wait for. At most 64 a call, read one at a time:
-- in a burst about one lease grows old per lease, so reading the oldest
-- 64 each time was most of what a lease read.
for _ = 1, 64 do
  local oldest = redis.call('ZRANGE', leases, 0, 0)[1]
  if not oldest or tonumber(string.match(oldest, ':(%d+)$')) + 60000 > NOW then
    break
  end
  redis.call('ZREM', leases, oldest)
end
return { 'ok', first, lease_era(history) }
