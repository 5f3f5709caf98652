-- Delete queue: drop a queue and everyone in it.
-- KEYS: the queue's keys (prelude). ARGV: now.
-- Returns {'ok'}, or {'no_queue'}. Consumed token ids
-- are kept until the tokens expire. UNLINK frees the keys' memory in the
-- background, so a queue of a million is deleted without holding Redis.

if redis.call('EXISTS', K_CONFIG) == 0 then
  return { 'no_queue' }
end
redis.call('UNLINK', K_CONFIG, K_SEQ, K_WAITING, K_ACTIVE, K_ADMITTED, K_STATS, K_RATE, K_BATCHES,
  K_BATCH_EXPIRY, K_PREQUEUE, K_POOL, K_SEEN, K_LOG, K_CLEARED, K_FLOW,
  K_JOINED)
return { 'ok' }
