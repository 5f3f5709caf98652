-- Admit: let up to max_count waiting users in, lowest tickets first, within
-- max_active (except in pass-through mode).
-- KEYS: the queue's keys (prelude).
-- ARGV: now, max_count, request id ('' for none).
-- Returns {'ok', epoch, user, ticket, admitted_at, expires_at, ...}, or
-- {'no_queue'} / {'paused'} / {'closed'}.
-- With a request id, the result is kept for ten minutes (by the caller's
-- clock) and a rerun returns it without admitting anyone else, so a retried
-- request is safe.

local BATCH_TTL_MS = 600000
local request = ARGV[3]
local cfg = load_config()
if not cfg then
  return { 'no_queue' }
end
local lapsed = redis.call('ZRANGEBYSCORE', K_BATCH_EXPIRY, '-inf', NOW)
for i = 1, #lapsed, 1000 do
  redis.call('HDEL', K_BATCHES, unpack(lapsed, i, math.min(i + 999, #lapsed)))
end
redis.call('ZREMRANGEBYSCORE', K_BATCH_EXPIRY, '-inf', NOW)
if request ~= '' then
  local previous = redis.call('HGET', K_BATCHES, request)
  if previous then
    return cjson.decode(previous)
  end
end
if cfg.mode == 'paused' or cfg.mode == 'closed' then
  return { cfg.mode }
end
expire_admissions()
-- A manual batch is the operator's call: it respects max_active but not
-- the automatic rate.
local room = tonumber(ARGV[2])
if cfg.mode == 'queueing' then
  room = math.min(room, free_slots(cfg))
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
if request ~= '' then
  redis.call('HSET', K_BATCHES, request, cjson.encode(out))
  redis.call('ZADD', K_BATCH_EXPIRY, NOW + BATCH_TTL_MS, request)
end
return out
