-- Shared head of every queue script (prepended by scripts.rs).
--
-- KEYS[1..9]: the queue's keys, as listed in keys.rs: config, seq, waiting,
--             active, admitted, stats, rate, batches, batch_expiry. A
--             script's own keys follow.
-- ARGV[1]:    the caller's clock, milliseconds since the Unix epoch. Scripts
--             never read Redis's clock, so every replica and the memory store
--             agree on what "now" means.
--
-- Every script mirrors a method of the memory store (store/memory/mod.rs);
-- keep the two in step.

local K_CONFIG, K_SEQ, K_WAITING, K_ACTIVE, K_ADMITTED, K_STATS, K_RATE, K_BATCHES, K_BATCH_EXPIRY =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local NOW = tonumber(ARGV[1])
local RATE_WINDOW_MS = 60000

local function load_config()
  local v = redis.call('HMGET', K_CONFIG, 'mode', 'max_active', 'admission_ttl_ms', 'created_at_ms',
    'admit_per_second')
  if not v[1] then
    return nil
  end
  return { mode = v[1], max_active = tonumber(v[2]), ttl = tonumber(v[3]), epoch = tonumber(v[4]),
    rate = tonumber(v[5]) }
end

-- The admission rate's token bucket, in milli-tokens so both stores count
-- exactly: it refills at admit_per_second tokens a second, holds at most one
-- second's worth, and starts full. It lives in the stats hash. Takes up to
-- `wanted` whole tokens and returns how many it took. A caller whose clock
-- is behind the last refill refills nothing.
local function take_tokens(cfg, wanted)
  local capacity = cfg.rate * 1000
  local v = redis.call('HMGET', K_STATS, 'bucket_milli', 'bucket_ms')
  local tokens, stamp = tonumber(v[1]), tonumber(v[2])
  if not tokens then
    tokens, stamp = capacity, NOW
  end
  if NOW > stamp then
    tokens = math.min(capacity, tokens + (NOW - stamp) * cfg.rate)
    stamp = NOW
  end
  tokens = math.min(tokens, capacity)
  local taken = math.min(wanted, math.floor(tokens / 1000))
  tokens = tokens - taken * 1000
  redis.call('HSET', K_STATS, 'bucket_milli', tokens, 'bucket_ms', stamp)
  return taken
end

-- Slots free under max_active (a large number when there is no cap).
local function free_slots(cfg)
  if cfg.max_active == 0 then
    return 1e15
  end
  return math.max(cfg.max_active - redis.call('ZCARD', K_ACTIVE), 0)
end

-- Ends the admissions whose expiry is at or before NOW.
local function expire_admissions()
  local gone = redis.call('ZRANGEBYSCORE', K_ACTIVE, '-inf', NOW)
  if #gone == 0 then
    return
  end
  redis.call('ZREMRANGEBYSCORE', K_ACTIVE, '-inf', NOW)
  -- unpack() is limited by Lua's C stack, so delete in slices.
  for i = 1, #gone, 1000 do
    redis.call('HDEL', K_ADMITTED, unpack(gone, i, math.min(i + 999, #gone)))
  end
  redis.call('HINCRBY', K_STATS, 'expired', #gone)
end

local function first_rate_bucket()
  return math.floor(math.max(NOW - RATE_WINDOW_MS, 0) / 1000) + 1
end

-- Admissions in the window and the span they cover (see domain/estimate.rs).
-- Cached within one script run; admissions clear the cache.
local rate_count, rate_span
local function rate_sample()
  if rate_count then
    return rate_count, rate_span
  end
  local first = first_rate_bucket()
  local flat = redis.call('HGETALL', K_RATE)
  local count, oldest = 0, nil
  for i = 1, #flat, 2 do
    local bucket = tonumber(flat[i])
    if bucket >= first then
      count = count + tonumber(flat[i + 1])
      if not oldest or bucket < oldest then
        oldest = bucket
      end
    end
  end
  if oldest then
    rate_count, rate_span = count, NOW - math.max(oldest * 1000, NOW - RATE_WINDOW_MS, 0)
  else
    rate_count, rate_span = 0, 0
  end
  return rate_count, rate_span
end

-- Counts n admissions made at NOW and drops buckets that left the window.
local function record_admissions(n)
  redis.call('HINCRBY', K_STATS, 'admitted', n)
  redis.call('HINCRBY', K_RATE, math.floor(NOW / 1000), n)
  local first = first_rate_bucket()
  for _, bucket in ipairs(redis.call('HKEYS', K_RATE)) do
    if tonumber(bucket) < first then
      redis.call('HDEL', K_RATE, bucket)
    end
  end
  rate_count = nil
end

-- Gives a user a slot until NOW + ttl; returns the expiry. The caller has
-- taken the user out of the waiting set and calls record_admissions.
local function admit_user(cfg, user, ticket)
  local expires = NOW + cfg.ttl
  redis.call('ZADD', K_ACTIVE, expires, user)
  redis.call('HSET', K_ADMITTED, user, ticket .. ':' .. NOW .. ':' .. expires)
  return expires
end

-- Ends a user's admission; true if there was one.
local function end_admission(user)
  if redis.call('HDEL', K_ADMITTED, user) == 1 then
    redis.call('ZREM', K_ACTIVE, user)
    return true
  end
  return false
end

-- A place as returned to the store: kind, ticket, waiting count, position,
-- admitted at, expires at, queue epoch, mode, rate count, rate span.
local function place(cfg, kind, ticket, position, admitted_at, expires_at)
  local count, span = rate_sample()
  return { kind, ticket, redis.call('ZCARD', K_WAITING), position, admitted_at, expires_at,
    cfg.epoch, cfg.mode, count, span }
end

local function admitted_place(cfg, record)
  local ticket, admitted_at, expires_at = string.match(record, '^(%d+):(%d+):(%d+)$')
  return place(cfg, 'admitted', tonumber(ticket), 0, tonumber(admitted_at), tonumber(expires_at))
end

-- The place of a user after expiry; in pass-through mode a waiting user is
-- admitted on the spot. {'none'} when neither waiting nor admitted.
local function current_place(cfg, user)
  local record = redis.call('HGET', K_ADMITTED, user)
  if record then
    return admitted_place(cfg, record)
  end
  local score = redis.call('ZSCORE', K_WAITING, user)
  if not score then
    return { 'none' }
  end
  local ticket = tonumber(score)
  if cfg.mode == 'pass_through' then
    redis.call('ZREM', K_WAITING, user)
    local expires = admit_user(cfg, user, ticket)
    record_admissions(1)
    return place(cfg, 'admitted', ticket, 0, NOW, expires)
  elseif cfg.mode == 'closed' then
    return place(cfg, 'closed', ticket, 0, 0, 0)
  end
  return place(cfg, 'waiting', ticket, redis.call('ZRANK', K_WAITING, user) + 1, 0, 0)
end
