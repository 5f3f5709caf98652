-- Admit named: a sub-line's part of AdmitUsers over sub-lines, for one
-- user its head entry planned to admit (admission_head.lua, 'plan_named'):
-- a waiting user leaves the line with their ticket, anyone else gets a new
-- one from the sub-line's block; one found admitted meanwhile (by
-- pass-through) keeps that admission. What it did is kept under the
-- entry's id and the user, so a replay answers the same.
-- KEYS: the sub-line's keys (prelude). ARGV: now, entry id, user, keep ms.
-- Returns {'ok', kind, ticket, admitted at, expires at} with kind
-- 'admitted' or 'already' ('settled' when another admitter settled the
-- entry meanwhile: the head has its result), {'lease', size} when a new ticket is needed and
-- the block is closed (nothing changed), or {'no_queue'}.

local cfg = load_config()
if not cfg then
  return { 'no_queue' }
end
local id, user = ARGV[2] .. '|' .. ARGV[3], ARGV[3]
local previous = kept_result(id)
if previous then
  -- Settled by another admitter meanwhile: the head has what it did.
  if previous[1] == 'settled' then
    return { 'ok', 'settled', 0, 0, 0 }
  end
  return previous
end
prepare(cfg)
local out
local record = redis.call('HGET', K_ADMITTED, user)
if record then
  local ticket, at, expires = string.match(record, '^(%d+):(%d+):(%d+)$')
  out = { 'ok', 'already', tonumber(ticket), tonumber(at), tonumber(expires) }
else
  local ticket = leave_line_admitted(user)
  if not ticket then
    if not block_open(cfg) then
      return { 'lease', next_block_size(cfg, 1) }
    end
    -- Pre-queued (counted when they arrived) or not in line at all.
    if not remove_from_line(cfg, user) then
      count_arrivals(cfg, 1)
    end
    ticket = take_block_ticket(cfg)
    save_block(cfg)
    note_joined(ticket)
  end
  local expires = admit_user(cfg, user, ticket)
  out = { 'ok', 'admitted', ticket, NOW, expires }
end
keep_result(id, out, ARGV[4])
return out
