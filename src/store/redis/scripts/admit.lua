-- Admit: let up to max_count waiting users in, lowest tickets first.
-- KEYS: the queue's keys (prelude), then optionally the batch result key.
-- ARGV: now, max_count.
-- Returns {'ok', epoch, user, ticket, admitted_at, expires_at, ...}, or
-- {'no_queue'} / {'paused'} / {'closed'}.
-- With a batch key, the result is kept for ten minutes and a rerun returns
-- it without admitting anyone else, so a retried request is safe. The
-- result records the queue's epoch; a recreated queue ignores it.

local K_BATCH = KEYS[8]
local BATCH_TTL_MS = 600000
local cfg = load_config()
if not cfg then
  return { 'no_queue' }
end
if K_BATCH then
  local previous = redis.call('GET', K_BATCH)
  if previous then
    previous = cjson.decode(previous)
    if previous[2] == cfg.epoch then
      return previous
    end
  end
end
if cfg.mode == 'paused' or cfg.mode == 'closed' then
  return { cfg.mode }
end
expire_admissions()
local room = tonumber(ARGV[2])
if cfg.mode == 'queueing' and cfg.max_active > 0 then
  room = math.min(room, cfg.max_active - redis.call('ZCARD', K_ACTIVE))
end
local out = { 'ok', cfg.epoch }
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
if K_BATCH then
  redis.call('SET', K_BATCH, cjson.encode(out), 'PX', BATCH_TTL_MS)
end
return out
