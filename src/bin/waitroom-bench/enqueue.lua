-- Enqueue: one user (see the store's enqueue_one.lua), the benchmark's
-- Redis-side baseline of an enqueue under redis-benchmark.
-- KEYS: the queue's keys (prelude). ARGV: now, user.
-- Returns a place (prelude), or {'no_queue'} / {'closed'} /
-- {'not_open', when the pre-queue opens}.
-- Idempotent: a second run finds the user in line or admitted.

local cfg = load_config()
if not cfg then
  return { 'no_queue' }
end
prepare(cfg)
return enqueue_one(cfg, ARGV[2])
