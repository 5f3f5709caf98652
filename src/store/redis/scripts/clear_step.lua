-- Clear step: take up to `limit` users out of line, waiting ones by ticket
-- first, then the pre-queued by arrival, then the draw's pool by key (the
-- memory store's clear_one), counted as cleared and remembered, so a
-- lookup of theirs says the queue closed (until it reopens). A rerun clears
-- whoever is left; bounded by the limit however long the line.
-- KEYS: the queue's keys (prelude). ARGV: now, limit.
-- Returns {'ok', number cleared}, or {'no_queue'}.

local cfg = load_config()
if not cfg then
  return { 'no_queue' }
end
prepare(cfg)
local limit = tonumber(ARGV[2])
local cleared = 0
for _, set in ipairs({ K_WAITING, K_PREQUEUE, K_POOL }) do
  if cleared >= limit then
    break
  end
  for _, user in ipairs(redis.call('ZRANGE', set, 0, limit - cleared - 1)) do
    if remove_from_line(cfg, user) then
      redis.call('SADD', K_CLEARED, user)
      cleared = cleared + 1
    end
  end
end
if cleared > 0 then
  redis.call('HINCRBY', K_STATS, 'cleared', cleared)
end
return { 'ok', cleared }
