-- Share load: service instances' open streams, so each replica learns its
-- share of the watchers. Not a queue's script: no prelude.
-- KEYS[1]: hash instance -> 'streams:reported_ms'.
-- ARGV: instance, streams ('' when the instance takes no part any more),
-- ttl_ms, now_ms.
-- Returns the streams of every instance reported within ttl_ms, in instance
-- order. Older reports are deleted; the hash lapses when nobody reports.
local instance, streams = ARGV[1], ARGV[2]
local ttl, now = tonumber(ARGV[3]), tonumber(ARGV[4])
if streams == '' then
  redis.call('HDEL', KEYS[1], instance)
else
  redis.call('HSET', KEYS[1], instance, streams .. ':' .. ARGV[4])
end
local all = redis.call('HGETALL', KEYS[1])
local names, loads = {}, {}
for i = 1, #all, 2 do
  local n, at = string.match(all[i + 1], '^(%d+):(%d+)$')
  if n == nil or now - tonumber(at) > ttl then
    redis.call('HDEL', KEYS[1], all[i])
  else
    names[#names + 1] = all[i]
    loads[all[i]] = tonumber(n)
  end
end
if #names > 0 then
  redis.call('PEXPIRE', KEYS[1], 2 * ttl + 1000)
end
table.sort(names)
local out = {}
for i, name in ipairs(names) do
  out[i] = loads[name]
end
return out
