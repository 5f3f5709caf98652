-- Update queue: change some fields of a queue's configuration. Every script
-- reads the configuration afresh, so a mode change holds for all replicas
-- from the next call on.
-- KEYS: the queue's keys (prelude). ARGV: now, field, value, ...
-- Returns the whole configuration as HGETALL does; empty if no such queue.

if redis.call('EXISTS', K_CONFIG) == 0 then
  return {}
end
if #ARGV > 1 then
  redis.call('HSET', K_CONFIG, unpack(ARGV, 2))
end
return redis.call('HGETALL', K_CONFIG)
