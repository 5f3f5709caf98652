-- Delete queue: drop a queue and everyone in it.
-- KEYS: the queue's keys (prelude), then the mark of its deletion and the
-- tickets given back from receipts. ARGV: now, the latest epoch known of
-- the queue besides its head's (its sub-lines', the head lost).
-- Returns {'ok'}, or {'no_queue'}. The mark (the epoch deleted) stays
-- until the queue is created again: a queue missing without it was lost
-- by the store, not deleted. Consumed token ids
-- are kept until the tokens expire. UNLINK frees the keys' memory in the
-- background, so a queue of a million is deleted without holding Redis.

-- Marked even when already gone: an operator's delete of a queue the
-- store lost says it is not to be waited for. The mark holds the latest
-- epoch the queue had (0 if none is known), which its next creation
-- passes (create_queue.lua).
local epoch = math.max(tonumber(redis.call('HGET', K_CONFIG, 'created_at_ms')) or 0,
  tonumber(redis.call('GET', KEYS[OWN]) or '0') or 0, tonumber(ARGV[2]) or 0)
redis.call('SET', KEYS[OWN], string.format('%d', epoch))
if redis.call('EXISTS', K_CONFIG) == 0 then
  return { 'no_queue' }
end
redis.call('UNLINK', K_CONFIG, K_SEQ, K_WAITING, K_ACTIVE, K_ADMITTED, K_STATS, K_RATE, K_BATCHES,
  K_BATCH_EXPIRY, K_PREQUEUE, K_POOL, K_SEEN, K_LOG, K_CLEARED, K_FLOW,
  K_JOINED, KEYS[OWN + 1])
return { 'ok' }
