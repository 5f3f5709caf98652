-- Install block: a block of tickets leased from the head (lease.lua) for
-- this sub-line (prelude.lua, `install_block`).
-- KEYS: the sub-line's keys (prelude). ARGV: now, first ticket, end (the
-- first ticket after it), leased at (ms, the leasing replica's clock read
-- before it asked), the queue's epoch the head leased it in.
-- Returns {'ok', 1} if installed, {'ok', 0} if not, or {'no_queue'}.

local cfg = load_config()
if not cfg then
  return { 'no_queue' }
end
if install_block(cfg, tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])) then
  return { 'ok', 1 }
end
return { 'ok', 0 }
