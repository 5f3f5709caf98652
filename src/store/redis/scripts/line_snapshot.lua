-- Line snapshot: the waiting tickets and the sequence number they are as
-- of, for an instance starting to follow the line. O(waiting), once per
-- instance and queue (and after falling behind the log).
-- KEYS: the queue's keys (prelude). ARGV: now.
-- Returns {'ok', epoch, seq, ticket...} or {'no_queue'}; the epoch is the
-- queue's creation time (a queue created again starts a new log).

if redis.call('EXISTS', K_CONFIG) == 0 then
  return { 'no_queue' }
end
local head = redis.call('HMGET', K_CONFIG, 'created_at_ms', 'log_seq')
local out = { 'ok', tonumber(head[1]) or 0, tonumber(head[2]) or 0 }
local flat = redis.call('ZRANGE', K_WAITING, 0, -1, 'WITHSCORES')
for i = 2, #flat, 2 do
  out[#out + 1] = tonumber(flat[i])
end
return out
