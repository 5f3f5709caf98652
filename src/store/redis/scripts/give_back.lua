-- Give back: a block leased ahead for a sub-line's call (enqueue_many.lua,
-- AHEAD) that the call did not install. Its lease no longer holds the
-- watermark back, and when no lease came after it, the head's sequence
-- goes back to before it, as if it had never been leased: then the tickets
-- are those a lease asked when needed gives (the memory store's).
-- Otherwise its numbers are a gap, which changes no position.
-- KEYS: the head's keys (prelude), then its leases (lease.lua). ARGV: now,
-- first ticket, end, leased at, the head's history@the queue's epoch (as
-- lease.lua answered).
-- Returns {'ok', 1 when the sequence went back, else 0} or {'no_queue'}.

if redis.call('EXISTS', K_CONFIG) == 0 then
  return { 'no_queue' }
end
-- Only in the history the block was leased in, of the same queue: a head
-- failed over since may lack the lease, or a floor told after it, and may
-- have leased the same numbers again, even under the same record; so may
-- a queue deleted and made again under its name.
if lease_era(history_now()) ~= ARGV[5] then
  return { 'ok', 0 }
end
local first, block_end = tonumber(ARGV[2]), tonumber(ARGV[3])
local held = redis.call('ZREM', KEYS[OWN], ARGV[2] .. ':' .. ARGV[4]) == 1
-- Nor below a sequence told since as a floor: a place given back
-- (head_restore.lua) or an opening's reservation (draw_head.lua) closes
-- every sub-line's blocks at or below it, and blocks leased there again
-- would be refused; a sub-line made again gives back receipts' tickets up
-- to it (read_seq.lua), which must not be given anew.
local floors = redis.call('HMGET', K_CONFIG, 'seq_floor', 'draw_end')
local floor = math.max(tonumber(floors[1]) or 0, tonumber(floors[2]) or 0)
if held and floor < first and tonumber(redis.call('GET', K_SEQ) or '0') == block_end - 1 then
  redis.call('SET', K_SEQ, first - 1)
  return { 'ok', 1 }
end
return { 'ok', 0 }
