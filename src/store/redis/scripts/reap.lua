-- Reap: release the places of users in line who showed no sign of life
-- within the heartbeat timeout, counted as abandoned. Every replica may run
-- it at any time: what it removes is decided by the data and the caller's
-- clock alone, so a second run finds nothing more to do.
-- KEYS: the queue's keys (prelude). ARGV: now, limit.
-- Returns {'ok', number released}, or {'no_queue'}.
-- Not while the queue is closed (watchers were told to stop), and presence
-- counts only from the last reopening, or from the first pass after an
-- outage (domain::presence_after_gap): each pass records when it ran, and a
-- pass that finds no pass within DEAF_AFTER_MS before it (or none at all:
-- a store back empty, or without its last writes) moves presence_since to
-- DEAF_AFTER_MS from now and releases nobody.

local cfg = load_config()
if not cfg then
  return { 'no_queue' }
end
local heard = tonumber(redis.call('HGET', K_CONFIG, 'heard_ms'))
if not heard or NOW > heard then
  redis.call('HSET', K_CONFIG, 'heard_ms', NOW)
end
if (not heard or NOW > heard + DEAF_AFTER_MS) and NOW > cfg.presence_since then
  redis.call('HSET', K_CONFIG, 'presence_since_ms', NOW + DEAF_AFTER_MS)
  return { 'ok', 0 }
end
if cfg.mode == 'closed' then
  return { 'ok', 0 }
end
-- Silent for the heartbeat timeout and a quarter more (QueueConfig::
-- release_after_ms): a recorded sign of life is renewed only once it is a
-- quarter of the timeout old.
local cutoff = math.max(NOW - (cfg.heartbeat + math.floor(cfg.heartbeat / 4)), 0)
if cfg.presence_since >= cutoff then
  return { 'ok', 0 }
end
local silent = redis.call('ZRANGEBYSCORE', K_SEEN, '-inf', '(' .. cutoff, 'LIMIT', 0, tonumber(ARGV[2]))
local released = 0
for _, user in ipairs(silent) do
  if remove_from_line(cfg, user) then
    released = released + 1
  else
    -- A sign of life of someone no longer in line: dropped, so it is
    -- neither counted again nor in the way of the LIMIT.
    redis.call('ZREM', K_SEEN, user)
  end
end
count_abandons(cfg, released)
return { 'ok', released }
