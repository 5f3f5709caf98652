-- Places: the current places of several users of one queue.
-- KEYS: the queue's keys (prelude). ARGV: now, touch (1 or 0), user...
-- Returns {'ok', place...}: one place (prelude) per user, {'none'} for a
-- user neither in line nor admitted; or {'no_queue'}. With touch, a sign of life of those in line.
-- Writes only what time and the mode already decided (expiry, opening,
-- pass-through admission) and presence, so running it twice changes nothing
-- more.

local cfg = load_config()
if not cfg then
  return { 'no_queue' }
end
prepare(cfg)
-- Outside pass-through, looking a place up never changes the line, and
-- presence is read by nothing here: the length is read once and presence
-- written once for all.
if cfg.mode ~= 'pass_through' then
  line_length = in_line(cfg)
end
local touch = ARGV[2] == '1'
local out = { 'ok' }
local seen = {}
for i = 3, #ARGV do
  local p = current_place(cfg, ARGV[i])
  if touch and p[1] ~= 'none' and not is_final(p) then
    seen[#seen + 1] = NOW
    seen[#seen + 1] = ARGV[i]
  end
  out[#out + 1] = p
end
for i = 1, #seen, 1000 do
  redis.call('ZADD', K_SEEN, 'GT', unpack(seen, i, math.min(i + 999, #seen)))
end
return out
