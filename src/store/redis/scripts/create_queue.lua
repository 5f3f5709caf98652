-- Create queue: write a queue's configuration unless the queue exists.
-- KEYS: the queue's keys (prelude). ARGV: now, field, value, ...
-- Returns {'ok'}, or {'exists'} if the queue already existed.

if redis.call('EXISTS', K_CONFIG) == 1 then
  return { 'exists' }
end
redis.call('HSET', K_CONFIG, unpack(ARGV, 2))
return { 'ok' }
