-- Lease: a block of tickets for a sub-line, from the head's sequence, after
-- every ticket leased before. The head keeps the leases of the last
-- TAU_MS + SKEW_MS, whose first tickets bound what admission may take
-- (domain::shards::Head::watermark).
-- KEYS: the head's keys (prelude), then its leases (a sorted set of
-- 'first:leased at' scored by first ticket). ARGV: now (the leasing
-- replica's clock, read before it asked), size.
-- Returns {'ok', first ticket} or {'no_queue'}.

if redis.call('EXISTS', K_CONFIG) == 0 then
  return { 'no_queue' }
end
local size = math.max(tonumber(ARGV[2]), 1)
local first = redis.call('INCRBY', K_SEQ, size) - size + 1
local leases = KEYS[OWN]
redis.call('ZADD', leases, first, first .. ':' .. ARGV[1])
-- Leases are dropped by the admission's watermark once past τ + ε by its
-- clock; here only those a minute old, so the set stays small when nobody
-- admits, and a caller whose clock is behind still finds every lease
-- admission may have to wait for.
for _, lease in ipairs(redis.call('ZRANGE', leases, 0, 63)) do
  local leased_at = tonumber(string.match(lease, ':(%d+)$'))
  if leased_at + 60000 > NOW then
    break
  end
  redis.call('ZREM', leases, lease)
end
return { 'ok', first }
