-- Touch: a sign of life for watched users still in line; one call carries
-- all the streams of one queue on one instance.
-- KEYS: the queue's keys (prelude). ARGV: now, user...
-- Returns {'ok', number of users touched}. XX: users who left, were admitted or
-- were released are not brought back. GT: a sign of life recorded late (an
-- instance's batch of them) never moves a newer one back.

-- Read only to be refused on the head of a queue over sub-lines.
load_config()
local touched = 0
for i = 2, #ARGV, 1000 do
  local args = { K_SEEN, 'XX', 'GT', 'CH' }
  for j = i, math.min(i + 999, #ARGV) do
    args[#args + 1] = NOW
    args[#args + 1] = ARGV[j]
  end
  touched = touched + redis.call('ZADD', unpack(args))
end
return { 'ok', touched }
