-- Create queue: write a queue's configuration unless the queue exists.
-- KEYS: the queue's keys (prelude), then the mark of its deletion.
-- ARGV: now, field, value, ...
-- Returns {'ok'}, or {'exists'} if the queue already existed. A queue
-- re-made after a loss (adopt_top among the fields) gives its first ticket
-- after adopt_top.

if redis.call('EXISTS', K_CONFIG) == 1 then
  return { 'exists' }
end
local fields = {}
for i = 2, #ARGV - 1, 2 do
  fields[ARGV[i]] = ARGV[i + 1]
end
-- A head made again from its sub-lines (from_parts) is not made over a
-- deletion that came since the queue was found lost: the queue stays
-- deleted, as if made by another.
if fields.from_parts and redis.call('EXISTS', KEYS[OWN]) == 1 then
  return { 'exists' }
end
redis.call('HSET', K_CONFIG, unpack(ARGV, 2))
redis.call('DEL', KEYS[OWN])
local top = tonumber(fields.adopt_top)
-- A head made again from its sub-lines starts its sequence above every
-- ticket they hold (start_seq).
local start = tonumber(fields.start_seq)
if top or start then
  redis.call('SET', K_SEQ, math.max(top or 0, start or 0))
end
redis.call('HDEL', K_CONFIG, 'from_parts', 'start_seq')
return { 'ok' }
