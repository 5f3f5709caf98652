-- Restore, the head's part (restore_sub_line.lua says the whole): whether
-- the ticket a receipt vouches for is given back, by the head's sequence
-- and the adoption of a lost queue (domain::restore_decision), and if so
-- the sequence and adoption it leaves.
-- KEYS: the head's keys (prelude), then the tickets of the lost line given
-- back, each once. ARGV: now, epoch, ticket, head, top.
-- Returns {'ok', 'given'} or {'ok', 'not_given'}, {'resync'} in another
-- history than the head's (prelude.lua, `same_history`), or {'no_queue'}.

local K_GIVEN_BACK = KEYS[OWN]
if redis.call('EXISTS', K_CONFIG) == 0 then
  return { 'no_queue' }
end
if not same_history() then
  return { 'resync' }
end
local epoch, ticket, head, top =
  tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local seq = tonumber(redis.call('GET', K_SEQ)) or 0
local v = redis.call('HMGET', K_CONFIG, 'created_at_ms', 'adopt_epoch_ms', 'adopt_head')
local new_seq
if epoch == tonumber(v[1]) then
  if ticket <= seq then
    return { 'ok', 'not_given' }
  end
  new_seq = ticket
else
  if not v[2] then
    return { 'ok', 'not_given' }
  end
  local adopted, floor = tonumber(v[2]), math.max(tonumber(v[3]), head)
  if (adopted ~= 0 and adopted ~= epoch) or epoch >= tonumber(v[1]) or ticket < floor then
    return { 'ok', 'not_given' }
  end
  -- Each lost place once: whatever became of it here since stands.
  if redis.call('SADD', K_GIVEN_BACK, ticket) == 0 then
    return { 'ok', 'not_given' }
  end
  redis.call('HSET', K_CONFIG, 'adopt_epoch_ms', epoch, 'adopt_head', floor)
  new_seq = math.max(seq, top, ticket)
end
if new_seq ~= seq then
  redis.call('SET', K_SEQ, new_seq)
end
return { 'ok', 'given' }
