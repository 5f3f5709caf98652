-- Create queue: write a queue's configuration unless the queue exists.
-- KEYS: the queue's keys (prelude), then the mark of its deletion, then
-- (a sub-line made with its queue) the sub-line's places given back.
-- ARGV: now, field, value, ...
-- Returns {'ok', the queue's epoch (its created_at_ms)}, or {'exists'} if
-- the queue already existed. A queue
-- re-made after a loss (adopt_top among the fields) gives its first ticket
-- after adopt_top. A sub-line made with its queue (made_anew among the
-- fields) is made over whatever its slot holds.

local fields = {}
for i = 2, #ARGV - 1, 2 do
  fields[ARGV[i]] = ARGV[i + 1]
end
if fields.made_anew then
  -- What the slot holds is of a queue of the same name: deleted half-way,
  -- or a copy of its config that a replica making a lost sub-line again
  -- read from its head before the deletion and wrote since. Removed in
  -- the step that writes the new config, so no such copy lands between
  -- and is taken for the new queue's.
  for i = 1, OWN - 1 do
    redis.call('UNLINK', KEYS[i])
  end
  redis.call('UNLINK', KEYS[OWN + 1])
elseif redis.call('EXISTS', K_CONFIG) == 1 then
  return { 'exists' }
end
-- A head made again from its sub-lines (from_parts) is not made over a
-- deletion that came since the queue was found lost: the queue stays
-- deleted, as if made by another.
if fields.from_parts and redis.call('EXISTS', KEYS[OWN]) == 1 then
  return { 'exists' }
end
redis.call('HSET', K_CONFIG, unpack(ARGV, 2))
-- A queue's epoch tells its blocks, receipts and tokens from those of a
-- queue of the same name deleted before it: one made in the deleted
-- one's millisecond, or by a replica whose clock is behind, takes the
-- millisecond after the deleted one's (delete_queue.lua's mark). A head
-- made again from its sub-lines keeps its own, and no mark stands then.
local epoch = tonumber(fields.created_at_ms) or 0
if not fields.sub_line and not fields.from_parts then
  local deleted = tonumber(redis.call('GET', KEYS[OWN]) or '')
  if deleted and deleted >= epoch then
    epoch = deleted + 1
    redis.call('HSET', K_CONFIG, 'created_at_ms', string.format('%d', epoch))
  end
end
redis.call('DEL', KEYS[OWN])
local top = tonumber(fields.adopt_top)
-- A head made again from its sub-lines starts its sequence above every
-- ticket they hold (start_seq).
local start = tonumber(fields.start_seq)
if top or start then
  redis.call('SET', K_SEQ, math.max(top or 0, start or 0))
end
redis.call('HDEL', K_CONFIG, 'from_parts', 'start_seq', 'made_anew')
return { 'ok', string.format('%d', epoch) }
