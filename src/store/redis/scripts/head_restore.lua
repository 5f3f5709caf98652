-- Restore, the head's part (restore_sub_line.lua says the whole): whether
-- the ticket a receipt vouches for is given back, by the head's sequence
-- and the adoption of a lost queue (domain::restore_decision), and if so
-- the sequence and adoption it leaves.
-- KEYS: the head's keys (prelude), then the tickets of the lost line given
-- back, each once, then whom each ticket was given back to (a hash). ARGV:
-- now, epoch, ticket, head, top, user. The head's decision is answered
-- again to the same user for the same ticket until the store has placed
-- them (and drops it): a restore whose later steps failed (a timeout) is
-- carried out again when the receipt comes back, where the sequence alone
-- would now say "given here".
-- Returns {'ok', 'given', sequence} (the sequence as the decision leaves
-- it: every block leased before it lies at or below it), with the lost
-- queue's adoption as it leaves it (epoch, head) when the ticket was one of
-- the lost queue's (the user's sub-line keeps both, from which a head lost
-- later is made again: sub_lines.rs, `head_from_sub_lines`), or
-- {'ok', 'not_given'}, {'resync'} in another history than the head's
-- (prelude.lua, `same_history`), or {'no_queue'}.

local K_GIVEN_BACK, K_GIVEN_TO = KEYS[OWN], KEYS[OWN + 1]
if redis.call('EXISTS', K_CONFIG) == 0 then
  return { 'no_queue' }
end
if not same_history() then
  return { 'resync' }
end
local epoch, ticket, head, top =
  tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local user = ARGV[6]
local function given()
  -- The sub-lines are told it as a floor.
  local out = { 'ok', 'given', told_seq() }
  if epoch ~= tonumber(redis.call('HGET', K_CONFIG, 'created_at_ms')) then
    local adopt = redis.call('HMGET', K_CONFIG, 'adopt_epoch_ms', 'adopt_head')
    out[4], out[5] = adopt[1] or '0', adopt[2] or '0'
  end
  return out
end
if redis.call('HGET', K_GIVEN_TO, ticket) == user then
  return given()
end
if not restore_by_sequence(tonumber(redis.call('HGET', K_CONFIG, 'created_at_ms')), epoch, ticket,
    head, top, K_GIVEN_BACK) then
  return { 'ok', 'not_given' }
end
redis.call('HSET', K_GIVEN_TO, ticket, user)
return given()
