-- Update queue: change some fields of a queue's configuration. Every script
-- reads the configuration afresh, so a change holds for all replicas from
-- the next call on. Reopening a closed queue restarts presence counting, so
-- nobody is released for the time the queue told them to stop watching;
-- so does shortening the heartbeat timeout.
-- KEYS: the queue's keys (prelude). ARGV: now, field, value, ...
-- Returns {'ok', field, value, ...} (the whole configuration, as HGETALL
-- gives it), {'no_queue'}, or {'opening_passed'} when asked to move an
-- opening that has happened.

local cfg = load_config()
if not cfg then
  return { 'no_queue' }
end
local changes = {}
for i = 2, #ARGV, 2 do
  changes[ARGV[i]] = ARGV[i + 1]
end
if changes.opens_at_ms and cfg.draw ~= 'none' then
  return { 'opening_passed' }
end
restart_presence(cfg, changes.mode, changes.heartbeat_timeout_ms)
if #ARGV > 1 then
  redis.call('HSET', K_CONFIG, unpack(ARGV, 2))
end
-- A queue that is not closed has no closing reason.
if (changes.mode or cfg.mode) ~= 'closed' and (cfg.closed_reason ~= '' or changes.closed_reason) then
  redis.call('HSET', K_CONFIG, 'closed_reason', '')
end
local out = redis.call('HGETALL', K_CONFIG)
table.insert(out, 1, 'ok')
return out
