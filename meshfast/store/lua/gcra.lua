-- meshfast_gcra_v1: one GCRA limit window (RPM or TPM) in one Redis key.
-- Bump the version on any behaviour change so rolling deploys never mix two rules.
--
-- The SAME rules as meshfast_core/limits_py.py (and its compiled twin _limits.pyx),
-- with milliseconds where those use nanoseconds. Change them together.
--
--   N = limit, P = period in ms, T = P/N; tat = theoretical arrival time.
--   tat is exact: stored as "<tat_ms>:<rem>:<N>" meaning tat_ms + rem/N ms.
--   take c:  refused if c > N; else granted iff floor(max(tat, now) + c*T) <= now + P,
--            then tat = max(tat, now) + c*T. (A cost of 0 passes unless overdrawn.)
--   back u:  tat = max(tat - u*T, now)         -- give_back: never above capacity
--   more u:  tat = max(tat, now) + u*T         -- take_more: even beyond capacity
--   remaining      = largest c in [0, N] that take would grant now
--   reset_after    = max(0, floor(tat) - now)  -- until the window is full again
--   retry_after(c) = max(0, floor(tat + c*T) - P - now), -1 (infinite) if c > N
--   a change of N keeps floor(tat) and drops rem (set_limit: keeps the fraction used)
--
-- Arithmetic is relative to now, in units of 1/N ms (rel = max(tat - now, 0) * N):
-- exact while (P + 1) * N plus any overdraft stays below 2^53 (Lua numbers are doubles).
--
-- KEYS[1] state key
-- ARGV    now_ms, limit, period_ms, cost [, mode: "take" (default) | "back" | "more"]
-- returns {allowed 0/1, remaining, reset_after_ms, retry_after_ms} after the operation;
--         retry_after_ms is for `cost` (0 when granted)

local now = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local p = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local mode = ARGV[5] or 'take'

local function whole(x, lo)
  return x ~= nil and x >= lo and x == math.floor(x)
end
if not (whole(now, 0) and whole(n, 1) and whole(p, 1) and whole(cost, 0)) then
  return redis.error_reply('gcra: now_ms, limit, period_ms, cost must be whole numbers')
end

-- floor(a / b) for a >= 0, exact below 2^53 (a / b alone may round up to an integer)
local function idiv(a, b)
  return (a - math.fmod(a, b)) / b
end

local rel = 0
local state = redis.call('GET', KEYS[1])
if state then
  local t, r, old_n = string.match(state, '^(%d+):(%d+):(%d+)$')
  t, r = tonumber(t), tonumber(r)
  if tonumber(old_n) ~= n then
    r = 0
  end
  rel = (t - now) * n + r
  if rel < 0 then
    rel = 0
  end
end

local edge = (p + 1) * n
local allowed = 1
if mode == 'take' then
  if cost > n or rel + cost * p >= edge then
    allowed = 0
  else
    rel = rel + cost * p
  end
elseif mode == 'back' then
  rel = rel - cost * p
  if rel < 0 then
    rel = 0
  end
elseif mode == 'more' then
  rel = rel + cost * p
else
  return redis.error_reply('gcra: mode must be take, back or more')
end

local ahead = idiv(rel, n)  -- floor(tat) - now
if rel == 0 then
  redis.call('DEL', KEYS[1])  -- a full window needs no state
else
  redis.call('SET', KEYS[1], string.format('%d:%d:%d', now + ahead, math.fmod(rel, n), n),
    'PX', ahead + 1)
end

local remaining = 0
local room = edge - rel
if room > 0 then
  remaining = math.min(n, idiv(room - 1, p))
end
local retry = 0
if cost > n then
  retry = -1
elseif allowed == 0 then
  retry = math.max(0, idiv(rel + cost * p, n) - p)
end
return {allowed, remaining, ahead, retry}
