-- Admit due: the automatic admitter's step, run by every replica on every
-- tick. Admits as many waiting users as the rate's token bucket, the free
-- slots and the line allow, lowest tickets first. Replicas share the one
-- bucket, so together they admit at the configured rate, never a multiple.
-- In pass-through mode it drains the line, up to max_count a step. Nobody
-- while the opening draw is placing the pre-queue.
-- KEYS: the queue's keys (prelude). ARGV: now, max_count.
-- Returns {'ok', epoch, user, ticket, admitted_at, expires_at, ...} (as
-- admit.lua) or {'no_queue'}.

local cfg = load_config()
if not cfg then
  return { 'no_queue' }
end
prepare(cfg)
local room = 0
if drawing(cfg) then
  room = 0
elseif cfg.mode == 'pass_through' then
  room = tonumber(ARGV[2])
elseif cfg.mode == 'queueing' and cfg.rate > 0 then
  local wanted = math.min(tonumber(ARGV[2]), redis.call('ZCARD', K_WAITING), free_slots(cfg))
  room = take_tokens(cfg, wanted)
end
return admit_next(cfg, room, { 'ok', cfg.epoch })
