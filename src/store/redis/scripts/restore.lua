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
if redis.call('ZSCORE', K_WAITING, user) or redis.call('HEXISTS', K_ADMITTED, user) == 1
    or redis.call('ZSCORE', K_PREQUEUE, user) or redis.call('ZSCORE', K_POOL, user)
    or redis.call('SISMEMBER', K_CLEARED, user) == 1 then
  return { 'ok', 'holds' }
end
local opening = (cfg.opens_at > 0 and NOW < cfg.opens_at) or drawing(cfg)
if opening or #redis.call('ZRANGEBYSCORE', K_WAITING, ticket, ticket, 'LIMIT', 0, 1) > 0 then
  return { 'ok', 'not_given' }
end

local release_after = cfg.heartbeat + math.floor(cfg.heartbeat / 4)
-- Good up to and at the instant its holder would be released (reap's
-- cutoff is strict).
if math.max(issued, cfg.presence_since) + release_after < NOW then
  return { 'ok', 'lapsed' }
end
if ticket == 0 then
  return { 'ok', 'not_given' }
end
local seq = tonumber(redis.call('GET', K_SEQ)) or 0
local adopt = redis.call('HMGET', K_CONFIG, 'adopt_epoch_ms', 'adopt_head', 'adopt_top')
local new_seq
if epoch == cfg.epoch then
  if ticket <= seq then
    return { 'ok', 'not_given' }
  end
  new_seq = ticket
else
  if not adopt[1] then
    return { 'ok', 'not_given' }
  end
  local adopted, floor = tonumber(adopt[1]), math.max(tonumber(adopt[2]), head)
  if (adopted ~= 0 and adopted ~= epoch) or epoch >= cfg.epoch or ticket < floor then
    return { 'ok', 'not_given' }
  end
  -- Each lost place once: whatever became of it here since stands.
  if redis.call('SADD', K_GIVEN_BACK, ticket) == 0 then
    return { 'ok', 'not_given' }
  end
  redis.call('HSET', K_CONFIG, 'adopt_epoch_ms', epoch, 'adopt_head', floor)
  new_seq = math.max(seq, top, ticket)
end
if new_seq ~= seq then
  redis.call('SET', K_SEQ, new_seq)
end
add_waiting(user, ticket)
see(user)
return { 'ok', current_place(cfg, user) }
