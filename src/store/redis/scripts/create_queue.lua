-- Create queue: write a queue's configuration unless the queue exists.
-- KEYS: the queue's keys (prelude), then the mark of its deletion.
-- ARGV: now, field, value, ...
-- Returns {'ok'}, or {'exists'} if the queue already existed. A queue
-- re-made after a loss (adopt_top among the fields) gives its first ticket
-- after adopt_top.

if redis.call('EXISTS', K_CONFIG) == 1 then
  return { 'exists' }
end
redis.call('HSET', K_CONFIG, unpack(ARGV, 2))
redis.call('DEL', KEYS[OWN])
local top = redis.call('HGET', K_CONFIG, 'adopt_top')
if top then
  redis.call('SET', K_SEQ, top)
end
return { 'ok' }
