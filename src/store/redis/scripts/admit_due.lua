-- Admit due: the automatic admitter's step, run by every replica on every
-- tick. Admits as many waiting users as the rate's token bucket, the free
-- slots and the line allow, lowest tickets first. Replicas share the one
-- bucket, so together they admit at the configured rate, never a multiple.
-- In pass-through mode it drains the line, up to max_count a step.
-- KEYS: the queue's keys (prelude). ARGV: now, max_count.
-- Returns {'ok', epoch, user, ticket, admitted_at, expires_at, ...} (as
-- admit.lua) or {'no_queue'}.

local cfg = load_config()
if not cfg then
  return { 'no_queue' }
end
local out = { 'ok', cfg.epoch }
local room = 0
if cfg.mode == 'pass_through' then
  expire_admissions()
  room = tonumber(ARGV[2])
elseif cfg.mode == 'queueing' and cfg.rate > 0 then
  expire_admissions()
  local wanted = math.min(tonumber(ARGV[2]), redis.call('ZCARD', K_WAITING), free_slots(cfg))
  room = take_tokens(cfg, wanted)
end
if room > 0 then
  local popped = redis.call('ZPOPMIN', K_WAITING, room)
  for i = 1, #popped, 2 do
    local user, ticket = popped[i], tonumber(popped[i + 1])
    local expires = admit_user(cfg, user, ticket)
    out[#out + 1] = user
    out[#out + 1] = ticket
    out[#out + 1] = NOW
    out[#out + 1] = expires
  end
  if #popped > 0 then
    record_admissions(#popped / 2)
  end
end
return out
