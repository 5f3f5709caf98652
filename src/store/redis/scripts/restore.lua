-- Restore: give a user who holds no place the place a receipt vouches for
-- (domain::restore_decision, the memory store's restore).
-- KEYS: the queue's keys (prelude), then the tickets of the lost line given
-- back, each once. ARGV: now, user, epoch, ticket, head, top, issued.
-- Returns {'ok', place} (prelude) when given back; {'ok', 'holds'} when
-- the user holds a place, {'ok', 'lapsed'} or {'ok', 'not_given'} when
-- nothing was given back (domain::Refusal); or {'no_queue'}.

local K_GIVEN_BACK = KEYS[OWN]
local cfg = load_config()
if not cfg then
  return { 'no_queue' }
end
prepare(cfg)
local user = ARGV[2]
local epoch, ticket, head, top, issued =
  tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
if holds_place(user) then
  return { 'ok', 'holds' }
end
local opening = (cfg.opens_at > 0 and NOW < cfg.opens_at) or drawing(cfg)
if opening or #redis.call('ZRANGEBYSCORE', K_WAITING, ticket, ticket, 'LIMIT', 0, 1) > 0 then
  return { 'ok', 'not_given' }
end

if receipt_lapsed(cfg, issued) then
  return { 'ok', 'lapsed' }
end
if ticket == 0 or not restore_by_sequence(cfg.epoch, epoch, ticket, head, top, K_GIVEN_BACK) then
  return { 'ok', 'not_given' }
end
add_waiting(user, ticket)
see(user)
return { 'ok', current_place(cfg, user) }
