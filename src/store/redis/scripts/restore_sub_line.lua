-- Restore, a sub-line's part: giving back a place from a receipt over
-- sub-lines (domain::restore_decision, the memory store's restore; one
-- slot does it all in restore.lua). The store checks the user's sub-line,
-- then whether another sub-line has the ticket waiting, then the head
-- (head_restore.lua), then closes every block and places the user.
-- KEYS: the sub-line's keys (prelude), then its places given back. ARGV:
-- now, step, user, ticket, issued, then the receipt's epoch ('lost') or the
-- head's sequence after its decision ('close', 'place'). By step:
--   'check' (the user's sub-line): {'ok', 'holds'} when the user holds a
--     place here; {'ok', 'not_given'} while an opening is under way or
--     when the ticket is waiting here; {'ok', 'lapsed'} when the receipt
--     lapsed (after the other sub-lines are checked); else {'ok', 'free'}.
--   'taken' (another sub-line): {'ok', 1} when the ticket is waiting
--     here, else {'ok', 0}.
--   'close' (every other sub-line, once the head gave the ticket back):
--     closes the block for good below the head's sequence, and answers
--     whether the ticket is waiting here ({'ok', 1}) or not ({'ok', 0}).
--     The answer is final: the block that could still give the ticket
--     gives nothing more, and a block leased before the decision (a join's
--     lease in flight) is not installed (prelude.lua, `install_block`).
--     The 'taken' asked before the decision could be overtaken by a
--     join of either kind; this is not.
--   'place' (the user's sub-line, after the closes): closes its block the
--     same way and puts the user in line at the ticket: {'ok', 1};
--     given, after the sequence, the lost queue's adoption as the head's
--     decision left it (epoch, head), keeps it and the ticket (as
--     'a:ticket' in its given_back), for a head made again from the
--     sub-lines to give each lost place back once still;
--     {'ok', 0} when the user came to hold a place meanwhile; {'ok', 2}
--     when the ticket came to be waiting here meanwhile.
--   'lost' (the user's sub-line, before the head is asked), with the
--     receipt's epoch after issued: when the sub-line was made again
--     after its Redis lost it (sub_lines.rs, `remake_sub_line`: `lost_head`
--     and `lost_top` set), a ticket of this queue from lost_head to
--     lost_top was given here and lost, and is given back once (the
--     sub-line's own given_back, KEYS[OWN]): {'ok', 1} placed, else
--     {'ok', 0} for the head to decide. A ticket at or below the cutoff of
--     an admission unsettled when the sub-line was made again
--     (`lost_entry`, `lost_entry_cutoff`) may have been popped here by it:
--     {'ok', 2, entry id}, for the head's record of it to decide
--     (admission_head.lua, 'admitted_by'); asked again as 'lost_cleared'
--     after, it is given back as any other.
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
if step == 'lost' or step == 'lost_cleared' then
  local v = redis.call('HMGET', K_CONFIG, 'lost_head', 'lost_top', 'lost_entry', 'lost_entry_cutoff')
  local lost_head, lost_top = tonumber(v[1]), tonumber(v[2])
  -- Below lost_head only a ticket spared when the head was made again
  -- from its sub-lines ('s:epoch:ticket', sub_lines.rs `remake_sub_line`).
  if not lost_top or tonumber(ARGV[6]) ~= cfg.epoch or ticket > lost_top
      or (ticket < lost_head
        and redis.call('SISMEMBER', KEYS[OWN], 's:' .. ARGV[6] .. ':' .. ticket) == 0)
      or holds() or taken() or redis.call('SISMEMBER', KEYS[OWN], ticket) == 1 then
    return { 'ok', 0 }
  end
  if v[3] and ticket <= tonumber(v[4]) and step == 'lost' then
    return { 'ok', 2, v[3] }
  end
  redis.call('SADD', KEYS[OWN], ticket)
  close_block(cfg)
  add_waiting(user, ticket)
  see(user)
  return { 'ok', 1 }
end
close_block(cfg)
local floor = tonumber(ARGV[6])
if floor and (step == 'close' or step == 'place') and (cfg.block_first or 0) < floor then
  -- A lease older than the decision starts at or below the floor.
  redis.call('HSET', K_CONFIG, 'block_first', floor)
  if not cfg.block_first then
    redis.call('HSET', K_CONFIG, 'block_next', floor, 'block_end', floor, 'block_ms', CLOSED)
  end
end
if step == 'close' then
  return { 'ok', taken() and 1 or 0 }
end
if step == 'place' then
  if holds() then
    return { 'ok', 0 }
  end
  if taken() then
    return { 'ok', 2 }
  end
  add_waiting(user, ticket)
  see(user)
  if ARGV[7] then
    redis.call('SADD', KEYS[OWN], 'a:' .. ticket)
    local kept = tonumber(redis.call('HGET', K_CONFIG, 'adopt_head')) or 0
    redis.call('HSET', K_CONFIG, 'adopt_epoch_ms', ARGV[7], 'adopt_head',
      math.max(kept, tonumber(ARGV[8])))
  end
  return { 'ok', 1 }
end
return { 'ok', 0 }
