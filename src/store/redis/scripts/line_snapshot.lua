-- Line snapshot: a chunk of the waiting tickets, those above a ticket, in
-- order, and the sequence number they are as of, for an instance starting
-- to follow the line (domain/line.rs says how chunks join). Bounded by the
-- limit, so a line of any length is read without holding Redis for long.
-- KEYS: the queue's keys (prelude). ARGV: now, after (ticket), limit.
-- Returns {'ok', epoch, seq, the drawn tickets held (above, through:
-- prelude's `drawn_hold`), ticket...} or {'no_queue'}; the epoch is the
-- queue's creation time (a queue created again starts a new log).

if not load_config() then
  return { 'no_queue' }
end
local head = redis.call('HMGET', K_CONFIG, 'created_at_ms', 'log_seq')
local above, through = drawn_hold(redis.call('ZCARD', K_PREQUEUE)
  + redis.call('ZCARD', K_POOL))
local out = { 'ok', tonumber(head[1]) or 0, tonumber(head[2]) or 0, above, through }
local flat = redis.call('ZRANGEBYSCORE', K_WAITING, '(' .. ARGV[2], '+inf', 'WITHSCORES', 'LIMIT', 0,
  tonumber(ARGV[3]))
for i = 2, #flat, 2 do
  out[#out + 1] = tonumber(flat[i])
end
return out
