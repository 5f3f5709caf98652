-- Enqueue many: concurrent enqueues of one queue coalesced into one call,
-- each user in turn exactly as enqueue.lua would (see enqueue_one.lua), so
-- Redis pays the call's fixed cost once for all of them.
-- KEYS: the queue's keys (prelude). ARGV: now, user...
-- Returns one answer of enqueue_one per user, in order; or {'no_queue'}.

local cfg = load_config()
if not cfg then
  return { 'no_queue' }
end
prepare(cfg)
local out = {}
for i = 2, #ARGV do
  out[#out + 1] = enqueue_one(cfg, ARGV[i])
end
return out
