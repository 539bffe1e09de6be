-- apply_batch.lua: apply one freshrec micro-batch to Redis atomically (one EVALSHA).
--
-- Called only by profiles/store.py (RedisFeatureStore.apply_batch), which documents the
-- key layout and builds ARGV. Every key is named in ARGV: freshrec runs on a single Redis
-- (not Redis Cluster), where a script may touch keys it did not declare in KEYS.
--
-- Order of work, chosen so that nothing is written unless the whole batch can be:
--   1. offset fence: if any partition's stored offset >= the batch's first offset,
--      write nothing and return {0, field, stored, field, stored, ...};
--   2. read and compute item stats (no writes yet; a field that cannot be decoded
--      raises before anything changed);
--   3. write user hashes (pre-encoded by Python), seen sets, item stats, trending and
--      co-visitation sorted sets, trims; the offsets last.
-- Returns {1, users, items, events, distinct covis pairs, rebases, trimmed}.
--
-- Numbers go to redis.call as Lua numbers (Redis formats them with %.17g: exact).
-- Never concatenate a number into a string (Lua uses %.14g).

local A = ARGV
local pos = 1
local function str()
  local v = A[pos]
  pos = pos + 1
  return v
end
local function num()
  local v = tonumber(A[pos])
  pos = pos + 1
  return v
end

-- ------------------------------------------------------------------ 1. offset fence
local offsets_key = str()
local n_parts = num()
local parts = {}
local conflict = false
for p = 1, n_parts do
  local field, first, last = str(), num(), num()
  local stored = redis.call('HGET', offsets_key, field)
  parts[p] = {field, last, stored}
  if stored and tonumber(stored) >= first then
    conflict = true
  end
end
if conflict then
  local out = {0}
  for p = 1, n_parts do
    out[#out + 1] = parts[p][1]
    out[#out + 1] = parts[p][3] or '-1'
  end
  return out
end

-- ------------------------------------------------------------------ configuration
local NT, NH = num(), num()              -- event types, half-lives
local H, TW, TREND_H, TREND_KEYS, TREND_FIELDS = {}, {}, {}, {}, {}
for j = 1, NH do H[j] = num() end        -- half-lives (s)
for k = 1, NT do TW[k] = num() end       -- popularity weight per type
local NTR = num()                        -- trending half-lives (a subset, 1 by default)
for j = 1, NTR do TREND_H[j] = num() end
for j = 1, NTR do TREND_KEYS[j] = str() end
for j = 1, NTR do TREND_FIELDS[j] = str() end  -- their fields in the landmark hash
local trend_lm_key, trend_cap = str(), num()
local covis_prefix, covis_lm_key, covis_h, covis_cap = str(), str(), num(), num()
local max_exp = num()                    -- rebase a landmark beyond this many half-lives
local TINY = num()                       -- values below are flushed to 0 (profiles.decay)
local conv_a, conv_p = num(), num()
local user_ttl_ms = num()                -- > 0: user keys expire after this much inactivity
local i_purchase, i_view, i_click = num(), num(), num()  -- counter indexes (1-based)
local NC = NT * NH
-- item_stats fields: NC counters (type-major), NT totals, NH popularity, conversion,
-- updated_at, then _ts:item_stats
local n_stat = NC + NT + NH + 3
local STAT = {}
for k = 1, n_stat do STAT[k] = str() end
local I_UPDATED = NC + NT + NH + 2
local READ = {}                          -- what an item update reads: counters, totals, updated_at
for k = 1, NC + NT do READ[k] = STAT[k] end
READ[NC + NT + 1] = STAT[I_UPDATED]

-- ------------------------------------------------------------------ codecs
local function varint(n)
  local t = {}
  while n >= 128 do
    local b = n % 128
    t[#t + 1] = string.char(b + 128)
    n = (n - b) / 128
  end
  t[#t + 1] = string.char(n)
  return table.concat(t)
end

local function read_varint(s, i)
  local result, mult = 0, 1
  while true do
    local b = string.byte(s, i)
    if b == nil then
      error('freshrec: truncated varint in item stats value')
    end
    if b < 128 then
      return result + b * mult
    end
    result = result + (b - 128) * mult
    mult = mult * 128
    i = i + 1
  end
end

-- A Feast Value holding a number (double, float or int64); nil when absent or null.
local function dec_num(s)
  if not s or s == '' then
    return nil
  end
  local tag = string.byte(s, 1)
  if tag == 41 then
    return (struct.unpack('<d', s, 2))
  elseif tag == 53 then
    return (struct.unpack('<f', s, 2))
  elseif tag == 32 then
    return read_varint(s, 2)
  end
  error('freshrec: item stats value with unexpected tag ' .. tostring(tag))
end

local function enc_double(x)
  return '\41' .. struct.pack('<d', x)
end

local function enc_int64(n)
  return '\32' .. varint(n)
end

-- google.protobuf.Timestamp of epoch seconds ts >= 0, microseconds rounded half-even
-- (the same bytes as profiles.feast_codec.encode_timestamp).
local function enc_ts(ts)
  local whole = math.floor(ts)
  local x = (ts - whole) * 1e6
  local us = math.floor(x)
  local d = x - us
  if d > 0.5 or (d == 0.5 and us % 2 == 1) then
    us = us + 1
  end
  if us >= 1000000 then
    whole = whole + 1
    us = us - 1000000
  end
  local out = ''
  if whole ~= 0 then out = '\8' .. varint(whole) end
  if us ~= 0 then out = out .. '\16' .. varint(us * 1000) end
  return out
end

-- ------------------------------------------------------------------ read the batch
local n_users = num()
local users = {}
for u = 1, n_users do
  local key, n = str(), num()
  users[u] = {key, pos, n}
  pos = pos + n
end

local n_seen = num()
local seen = {}
for s = 1, n_seen do
  local key, n = str(), num()
  seen[s] = {key, pos, n}
  pos = pos + n
end

-- ------------------------------------------------------------------ 2. item stats
-- The port of profiles.item_state.ItemState.apply (the reference; U = updated_at):
--   t > U (or new item): every counter *= 2^(-(t - U)/h) (flushed below TINY), U = t,
--                        then the event's counters += w
--   t == U:              the event's counters += w
--   t < U:               the event's counters += w * 2^(-(U - t)/h) (nothing below TINY)
--   {type}_total += 1; popularity_h = sum_type TW * counter; conversion from the longest h.
-- With w = 1 (what ItemState counts) the results are bit-identical to ItemState.
local n_items = num()
local items = {}
local n_events = 0
for it = 1, n_items do
  local key, member, n = str(), str(), num()
  local vals = redis.call('HMGET', key, unpack(READ))
  local c, tot = {}, {}
  local any = false
  for k = 1, NC do c[k] = dec_num(vals[k]) or 0 end
  for k = 1, NT do
    tot[k] = dec_num(vals[NC + k]) or 0
    if tot[k] > 0 then any = true end
  end
  local U = nil
  if any then U = dec_num(vals[NC + NT + 1]) or 0 end
  local ev = {}
  local tmax = nil
  for e = 1, n do
    local T, t, w = num(), num(), num()
    ev[e] = {T, t, w}
    if tmax == nil or t > tmax then tmax = t end
    local base = (T - 1) * NH
    if U == nil or t > U then
      if U ~= nil then
        local dt = t - U
        for j = 1, NH do
          local f = 2 ^ (-dt / H[j])
          if f >= TINY then
            for k = j, NC, NH do
              local v = c[k] * f
              if v >= TINY then c[k] = v else c[k] = 0 end
            end
          else
            for k = j, NC, NH do c[k] = 0 end
          end
        end
      end
      U = t
      for j = 1, NH do c[base + j] = c[base + j] + w end
    elseif t == U then
      for j = 1, NH do c[base + j] = c[base + j] + w end
    else
      local dt = U - t
      for j = 1, NH do
        local f = 2 ^ (-dt / H[j])
        if f >= TINY then c[base + j] = c[base + j] + w * f end
      end
    end
    tot[T] = tot[T] + 1
  end
  n_events = n_events + n
  local hset = {}
  for k = 1, NC do
    hset[#hset + 1] = STAT[k]
    hset[#hset + 1] = enc_double(c[k])
  end
  for k = 1, NT do
    hset[#hset + 1] = STAT[NC + k]
    hset[#hset + 1] = enc_int64(tot[k])
  end
  for j = 1, NH do
    local pop = 0
    for T = 1, NT do pop = pop + TW[T] * c[(T - 1) * NH + j] end
    hset[#hset + 1] = STAT[NC + NT + j]
    hset[#hset + 1] = enc_double(pop)
  end
  hset[#hset + 1] = STAT[NC + NT + NH + 1]
  hset[#hset + 1] = enc_double((c[i_purchase] + conv_a * conv_p) / (c[i_view] + c[i_click] + conv_a))
  hset[#hset + 1] = STAT[I_UPDATED]
  hset[#hset + 1] = enc_double(U)
  hset[#hset + 1] = STAT[n_stat]
  hset[#hset + 1] = enc_ts(U)
  items[it] = {key, member, ev, tmax, hset}
end

-- Co-visitation groups: a, R_a (latest time of a's increments), n, then n x (b, S_ab)
-- with S_ab = sum of w * 2^((t - R_a)/h) (summed in Python, see store._covis_args).
local n_groups = num()
local groups = {}
local n_pairs = 0
for g = 1, n_groups do
  local a, r, n = str(), num(), num()
  groups[g] = {a, r, pos, n}
  pos = pos + 2 * n
  n_pairs = n_pairs + n
end

-- ------------------------------------------------------------------ 3. writes
for u = 1, n_users do
  local rec = users[u]
  if rec[3] > 0 then
    redis.call('HSET', rec[1], unpack(A, rec[2], rec[2] + rec[3] - 1))
    if user_ttl_ms > 0 then redis.call('PEXPIRE', rec[1], user_ttl_ms) end
  end
end
for s = 1, n_seen do
  local rec = seen[s]
  if rec[3] > 0 then
    redis.call('SADD', rec[1], unpack(A, rec[2], rec[2] + rec[3] - 1))
    if user_ttl_ms > 0 then redis.call('PEXPIRE', rec[1], user_ttl_ms) end
  end
end

local rebases = 0
-- Multiply every score of a forward-decayed sorted set by 2^(-(new_l - old_l)/h),
-- flushing results below TINY to 0.
local function rebase(key, old_l, new_l, h)
  local f = 2 ^ (-(new_l - old_l) / h)
  local members = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  local args = {}
  for k = 1, #members, 2 do
    local v = tonumber(members[k + 1]) * f
    if v < TINY then v = 0 end
    args[#args + 1] = v
    args[#args + 1] = members[k]
    if #args >= 2000 then
      redis.call('ZADD', key, unpack(args))
      args = {}
    end
  end
  if #args > 0 then redis.call('ZADD', key, unpack(args)) end
  rebases = rebases + 1
end

-- Trending: score = sum of TW * w * 2^((t - L)/h), one landmark L per half-life.
local trend_l = redis.call('HMGET', trend_lm_key, unpack(TREND_FIELDS))
for j = 1, NTR do trend_l[j] = tonumber(trend_l[j]) end
for it = 1, n_items do
  local rec = items[it]
  redis.call('HSET', rec[1], unpack(rec[5]))
  local ev, tmax = rec[3], rec[4]
  for j = 1, NTR do
    local L = trend_l[j]
    if L == nil or (tmax - L) / TREND_H[j] > max_exp then
      if L ~= nil then rebase(TREND_KEYS[j], L, tmax, TREND_H[j]) end
      L = tmax
      trend_l[j] = L
      redis.call('HSET', trend_lm_key, TREND_FIELDS[j], L)
    end
    local inc = 0
    for e = 1, #ev do
      inc = inc + TW[ev[e][1]] * ev[e][3] * 2 ^ ((ev[e][2] - L) / TREND_H[j])
    end
    if inc < TINY then inc = 0 end
    redis.call('ZINCRBY', TREND_KEYS[j], inc, rec[2])
  end
end

-- Co-visitation, the port of profiles.covisitation.CovisitationIndex.add: ZSET
-- <prefix><a> of b -> sum of w * 2^((t - L_a)/h), L_a in the landmark hash (the first
-- R_a seen), rebased to R_a when R_a is more than max_exp half-lives past it.
local touched = {}
for g = 1, n_groups do
  local a, r, first, n = groups[g][1], groups[g][2], groups[g][3], groups[g][4]
  local key = covis_prefix .. a
  local L = tonumber(redis.call('HGET', covis_lm_key, a))
  if L == nil or (r - L) / covis_h > max_exp then
    if L ~= nil then rebase(key, L, r, covis_h) end
    L = r
    redis.call('HSET', covis_lm_key, a, L)
  end
  local f = 2 ^ ((r - L) / covis_h)
  for k = first, first + 2 * n - 1, 2 do
    local d = tonumber(A[k + 1]) * f
    if d < TINY then d = 0 end
    redis.call('ZINCRBY', key, d, A[k])
  end
  touched[#touched + 1] = key
end

-- Bound memory: a set above 2*cap members keeps its cap best, ranked by
-- (score descending, member ascending) like CovisitationIndex (ZSET ties sort by
-- member bytes, which is code point order for UTF-8).
local trimmed = 0
local function trim(key, cap)
  local n = redis.call('ZCARD', key)
  if n <= 2 * cap then return end
  local asc = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  local ranked = {}
  local k = #asc - 1
  while k >= 1 do  -- walk score groups from the highest, members ascending inside
    local s = asc[k + 1]
    local j = k
    while j - 2 >= 1 and asc[j - 1] == s do j = j - 2 end
    for m = j, k, 2 do ranked[#ranked + 1] = asc[m] end
    k = j - 2
  end
  local drop = {}
  for m = cap + 1, #ranked do
    drop[#drop + 1] = ranked[m]
    if #drop >= 2000 then
      trimmed = trimmed + redis.call('ZREM', key, unpack(drop))
      drop = {}
    end
  end
  if #drop > 0 then trimmed = trimmed + redis.call('ZREM', key, unpack(drop)) end
  -- A ZSET that grew past zset-max-listpack-entries stays a skiplist when it shrinks;
  -- copying it lets Redis pick the compact listpack again when the cap fits.
  local tmp = key .. ':~trim'
  redis.call('ZRANGESTORE', tmp, key, 0, -1)
  redis.call('RENAME', tmp, key)
end
for k = 1, #touched do trim(touched[k], covis_cap) end
if n_items > 0 then
  for j = 1, NTR do trim(TREND_KEYS[j], trend_cap) end
end

-- The offsets, last.
for p = 1, n_parts do
  redis.call('HSET', offsets_key, parts[p][1], parts[p][2])
end

return {1, n_users, n_items, n_events, n_pairs, rebases, trimmed}
