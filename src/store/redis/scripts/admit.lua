-- Admit: let up to max_count waiting users in, lowest tickets first, within
-- max_active (except in pass-through mode). Nobody while the opening draw is
-- placing the pre-queue.
-- KEYS: the queue's keys (prelude).
-- ARGV: now, max_count, request id ('' for none), how long to keep the
--       result (ms).
-- Returns {'ok', epoch, user, ticket, admitted_at, expires_at, ...}, or
-- {'no_queue'} / {'paused'} / {'closed', closing reason}.
-- With a request id, the result is kept (by the caller's clock) and a rerun
-- returns it without admitting anyone else, so a retried request is safe.

local request = ARGV[3]
local cfg = load_config()
if not cfg then
  return { 'no_queue' }
end
forget_lapsed_results()
if request ~= '' then
  local previous = redis.call('HGET', K_BATCHES, request)
  if previous then
    return cjson.decode(previous)
  end
end
if cfg.mode == 'paused' or cfg.mode == 'closed' then
  return { cfg.mode, cfg.closed_reason }
end
prepare(cfg)
-- A manual batch is the operator's call: it respects max_active but not
-- the automatic rate.
local room = tonumber(ARGV[2])
if drawing(cfg) then
  room = 0
elseif cfg.mode == 'queueing' then
  room = math.min(room, free_slots(cfg))
end
local out = admit_next(cfg, room, { 'ok', cfg.epoch })
if request ~= '' then
  keep_result(request, out, ARGV[4])
end
return out
