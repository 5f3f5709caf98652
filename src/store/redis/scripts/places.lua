-- Places: the current places of several users of one queue.
-- KEYS: the queue's keys (prelude). ARGV: now, user...
-- Returns one place (prelude) per user, {'none'} for a user neither waiting
-- nor admitted; or {'no_queue'}.
-- Writes only what time and the mode already decided (expiry, pass-through
-- admission), so running it twice changes nothing more.

local cfg = load_config()
if not cfg then
  return { 'no_queue' }
end
expire_admissions()
local out = {}
for i = 2, #ARGV do
  out[#out + 1] = current_place(cfg, ARGV[i])
end
return out
