-- Restore, a sub-line's part: giving back a place from a receipt over
-- sub-lines (domain::restore_decision, the memory store's restore; one
-- slot does it all in restore.lua). The store checks the user's sub-line,
-- then whether another sub-line has the ticket waiting, then the head
-- (head_restore.lua), then places the user and closes every block.
-- KEYS: the sub-line's keys (prelude), then its places given back. ARGV:
-- now, step, user, ticket, issued. By step:
--   'check' (the user's sub-line): {'ok', 'holds'} when the user holds a
--     place here; {'ok', 'not_given'} while an opening is under way or
--     when the ticket is waiting here; {'ok', 'lapsed'} when the receipt
--     lapsed (after the other sub-lines are checked); else {'ok', 'free'}.
--   'taken' (another sub-line): {'ok', 1} when the ticket is waiting
--     here, else {'ok', 0}.
--   'place' (the user's sub-line, once the head gave the ticket back):
--     closes the block and puts the user in line at the ticket:
--     {'ok', 1}; {'ok', 0} when the user came to hold a place meanwhile.
--   'close' (every other sub-line): closes the block: {'ok', 0}.
--   'lost' (the user's sub-line, before the head is asked), with the
--     receipt's epoch after issued: when the sub-line was made again
--     after its Redis lost it (sub_lines.rs, `remake_sub_line`: `lost_head`
--     and `lost_top` set), a ticket of this queue from lost_head to
--     lost_top was given here and lost, and is given back once (the
--     sub-line's own given_back, KEYS[OWN]): {'ok', 1} placed, else
--     {'ok', 0} for the head to decide.
-- Or {'no_queue'}.

local cfg = load_config()
if not cfg then
  return { 'no_queue' }
end
prepare(cfg)
local step, user, ticket, issued = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local function holds()
  return holds_place(user)
end
local function taken()
  return #redis.call('ZRANGEBYSCORE', K_WAITING, ticket, ticket, 'LIMIT', 0, 1) > 0
end

if step == 'check' then
  if holds() then
    return { 'ok', 'holds' }
  end
  if (cfg.opens_at > 0 and NOW < cfg.opens_at) or drawing(cfg) or taken() then
    return { 'ok', 'not_given' }
  end
  if receipt_lapsed(cfg, issued) then
    return { 'ok', 'lapsed' }
  end
  return { 'ok', 'free' }
end
if step == 'taken' then
  return { 'ok', taken() and 1 or 0 }
end
if step == 'lost' then
  local v = redis.call('HMGET', K_CONFIG, 'lost_head', 'lost_top')
  local lost_head, lost_top = tonumber(v[1]), tonumber(v[2])
  if not lost_top or tonumber(ARGV[6]) ~= cfg.epoch or ticket < lost_head or ticket > lost_top
      or holds() or taken() or redis.call('SADD', KEYS[OWN], ticket) == 0 then
    return { 'ok', 0 }
  end
  close_block(cfg)
  add_waiting(user, ticket)
  see(user)
  return { 'ok', 1 }
end
close_block(cfg)
if step == 'place' then
  if holds() then
    return { 'ok', 0 }
  end
  add_waiting(user, ticket)
  see(user)
  return { 'ok', 1 }
end
return { 'ok', 0 }
