-- Copy settings: a sub-line takes the settings of its queue's head, as of
-- the head's settings version, unless it holds those of a later version
-- already: a late or repeated copy changes nothing, and every sub-line
-- ends with the latest. As an update of a one-slot queue does
-- (update_queue.lua), reopening or a shorter heartbeat timeout restarts
-- presence counting, and reopening forgets those cleared.
-- KEYS: the sub-line's keys (prelude). ARGV: now, version, field, value,
-- ... (every setting).
-- Returns {'ok', 1} when taken, {'ok', 0} when not, or {'no_queue'}.

local cfg = load_config()
if not cfg then
  return { 'no_queue' }
end
local version = tonumber(ARGV[2])
if (tonumber(redis.call('HGET', K_CONFIG, 'settings_version')) or 0) >= version then
  return { 'ok', 0 }
end
local settings = {}
for i = 3, #ARGV, 2 do
  settings[ARGV[i]] = ARGV[i + 1]
end
restart_presence(cfg, settings.mode, settings.heartbeat_timeout_ms)
redis.call('HSET', K_CONFIG, 'settings_version', version, unpack(ARGV, 3))
return { 'ok', 1 }
