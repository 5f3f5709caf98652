-- Enqueue: give a user a ticket, or return the place they hold.
-- KEYS: the queue's keys (prelude). ARGV: now, user.
-- Returns a place (prelude), or {'no_queue'} / {'closed'}.
-- Idempotent: a second run finds the user waiting or admitted.

local user = ARGV[2]
local cfg = load_config()
if not cfg then
  return { 'no_queue' }
end
expire_admissions()
local record = redis.call('HGET', K_ADMITTED, user)
if record then
  return admitted_place(cfg, record)
end
if cfg.mode == 'closed' then
  return { 'closed' }
end
local existing = current_place(cfg, user)
if existing[1] ~= 'none' then
  return existing
end

local ticket = redis.call('INCR', K_SEQ)
redis.call('HINCRBY', K_STATS, 'enqueued', 1)
-- The line forms only when it must: with nobody waiting, a free slot and
-- (when the rate is limited) a token, the newcomer goes straight in.
local admit_now = cfg.mode == 'pass_through'
if cfg.mode == 'queueing' and (cfg.max_active > 0 or cfg.rate > 0)
    and redis.call('ZCARD', K_WAITING) == 0 and free_slots(cfg) > 0 then
  admit_now = cfg.rate == 0 or take_tokens(cfg, 1) == 1
end
if admit_now then
  local expires = admit_user(cfg, user, ticket)
  record_admissions(1)
  return place(cfg, 'admitted', ticket, 0, NOW, expires)
end
redis.call('ZADD', K_WAITING, ticket, user)
return place(cfg, 'waiting', ticket, redis.call('ZRANK', K_WAITING, user) + 1, 0, 0)
