#!lua name=__LIB__
-- meshfast's Redis functions: every hot-path state change of the Redis store is one call
-- of one function here, so it is atomic across all instances. The hot path calls `batch`:
-- the admits and settles of one account that an instance has ready together, in one call.
--
-- Versioned by name: the loader (meshfast/store/redis_store.py) replaces __LIB__ with
-- "meshfast_" plus a hash of this file, so two versions of these rules never share a
-- name and a rolling upgrade runs each instance against its own version.
--
-- Key layout (P is the configured prefix, A an account id; every key a function touches
-- carries the hash tag {A}, so the functions also run on Redis Cluster):
--   P:{A}:a            hash  account: id name balance held spent topped margin_ppm fee_nano created ver,
--                            pn (no later than the earliest open hold's expiry: see purge),
--                            h:<owner> held by the owner's open calls (owner: a key or project id),
--                            s:<owner>:<YYYY-MM or YYYY-MM-DD> settled spend (keys and projects:
--                            both periods; the account: months). One hash, so a batch call
--                            reads and writes it in one command each.
--   P:{A}:k:<key>      hash  key: id project_id account_id hash prefix name created revoked_at expires_at limits
--   P:{A}:p:<proj>     hash  project: id account_id name created limits
--   P:{A}:hs           zset  open holds (the member carries the hold's data) -> expiry (ms)
--   P:{A}:cc:<owner>   zset  hold ids counted against the owner's concurrency limit -> expiry (ms)
--   P:{A}:w:<owner>:r|t       GCRA state of the owner's requests / tokens window
--   P:{A}:r:<receipt>  hash  j = receipt JSON (c = the total when it was capped at the balance)
--   P:{A}:rs           zset  receipt id -> created (ms)
--   P:{A}:tu           hash  "<chain>:<tx>" -> top-up JSON
-- "ver" counts changes to what instances cache about the account (terms, key and project
-- limits, revocations); admit refuses with "stale" when the caller's copy is older.
--
-- Money is integer nano-USD. Lua numbers are doubles: exact up to 2^53 nano-USD
-- (about 9 million USD), which topup enforces per account. A number written to Redis goes
-- through I() first: redis.call would send a Lua number as "%.17g" on Redis 7.0 but in
-- the shortest form on 7.2.0-7.2.4 ("1e+08" for $0.10), which HINCRBY refuses and Python's
-- int() cannot read. The batch function formats each changed field once per call.

local MAX_NANO = 9007199254740991

-- an integer as Redis wants it, whatever the Redis version
local function I(x)
  return string.format('%d', x)
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A new value for the account's `ver`: a counter and the server time, so that a Redis
-- restored from an older snapshot never hands out a value an instance already cached.
local function new_ver(acct)
  local t = redis.call('TIME')
  local n = redis.call('HINCRBY', acct, 'vern', 1)
  local v = n .. '.' .. t[1] .. t[2]
  redis.call('HSET', acct, 'ver', v)
  return v
end

-- floor(a / b) for a >= 0, exact below 2^53
local function idiv(a, b)
  return (a - math.fmod(a, b)) / b
end

local function num(v)
  return tonumber(v) or 0
end

-- GCRA windows: the rules of meshfast_core/limits_py.py, in milliseconds.
--   N = limit, P = period in ms, T = P/N; tat = theoretical arrival time, kept exactly as
--   "<tat_ms>:<rem>:<N>" meaning tat_ms + rem/N ms. Below, rel = max(tat - now, 0) * N.
--   take c:  refused if c > N; else granted iff floor(max(tat, now) + c*T) <= now + P,
--            i.e. rel + c*P < (P + 1) * N; then tat = max(tat, now) + c*T.
--   give back u: tat = max(tat - u*T, now);   take more u: tat = max(tat, now) + u*T.
--   remaining = the largest c in [0, N] take would grant; reset = floor(tat) - now;
--   retry_after(c) = max(0, floor(tat + c*T) - P - now), -1 (never) if c > N.
--   A change of N keeps floor(tat) and drops rem (the fraction of the window used stays).
--   Exact while (P + 1) * N stays below 2^53 (Lua numbers are doubles).
local function g_load(key, n, now)
  local s = redis.call('GET', key)
  if not s then
    return 0
  end
  local t, r, old = string.match(s, '^(%d+):(%d+):(%d+)$')
  if not t then
    return 0
  end
  if tonumber(old) ~= n then
    r = 0
  end
  local rel = (tonumber(t) - now) * n + tonumber(r)
  if rel < 0 then
    return 0
  end
  return rel
end

local function g_save(key, rel, n, now)
  if rel <= 0 then
    redis.call('DEL', key)
    return
  end
  local ahead = idiv(rel, n)
  redis.call('SET', key, string.format('%d:%d:%d', now + ahead, math.fmod(rel, n), n), 'PX', ahead + 1)
end

local function g_fits(rel, n, p, cost)
  return cost <= n and rel + cost * p < (p + 1) * n
end

local function g_retry(rel, n, p, cost)
  if cost > n then
    return -1
  end
  return math.max(0, idiv(rel + cost * p, n) - p)
end

local function g_remaining(rel, n, p)
  local room = (p + 1) * n - rel
  if room <= 0 then
    return 0
  end
  return math.min(n, idiv(room - 1, p))
end

-- tokens window correction when a call ends: give back (used < reserved) or take more
local function g_correct(key, n, p, now, reserved, used)
  if n <= 0 or used == reserved then
    return
  end
  local rel = g_load(key, n, now)
  if used < reserved then
    rel = math.max(rel - (reserved - used) * p, 0)
  else
    rel = rel + (used - reserved) * p
  end
  g_save(key, rel, n, now)
end

-- A hold is one member of the zset P:{A}:hs (score: its expiry in ms), carrying its data:
--   "<hold_id>:<amount>:<key_id>:<project_id>:<tokens>:<key_tpm>:<project_tpm>:<kc><pc>"
-- (kc / pc: 1 when the hold took a concurrency slot of the key / the project). The caller
-- builds the member at admit and passes it back to settle or release; ZREM of the member
-- is the atomic "was it still open" test. No hash per hold: fewer commands per call.
-- A member ending in PLAIN took no slot and reserved no tokens: closing it is its ZREM.
local PLAIN = ':0:0:00'

local function parse_hold(m)
  local hid, a, kid, pid, t, kt, pt, kc, pc =
    string.match(m, '^([^:]+):(%d+):([^:]+):([^:]+):(%d+):(%d+):(%d+):([01])([01])$')
  return hid, tonumber(a), kid, pid, tonumber(t), tonumber(kt), tonumber(pt), kc == '1', pc == '1'
end

-- Close an open hold: give its concurrency slots back and correct its token reservations
-- to `used` (nil: nothing was used). Returns its amount, key and project (the caller gives
-- the amount back on the account hash), or false when the hold was no longer open. An
-- expired hold's token reservation is left as it is.
local function close_hold(base, member, p, used, expired)
  local hid, amount, kid, pid, tokens, kt, pt, kc, pc = parse_hold(member)
  if not hid then
    return false
  end
  -- On a cluster node whose slot is migrating, a key already moved makes any access to it
  -- fail: touch every key closing the hold writes (the account's too) before writing any,
  -- so the call fails whole instead of half done.
  local touched = {base .. 'a', base .. 'hs'}
  if kc then
    touched[#touched + 1] = base .. 'cc:' .. kid
  end
  if pc then
    touched[#touched + 1] = base .. 'cc:' .. pid
  end
  if kt > 0 then
    touched[#touched + 1] = base .. 'w:' .. kid .. ':t'
  end
  if pt > 0 then
    touched[#touched + 1] = base .. 'w:' .. pid .. ':t'
  end
  redis.call('EXISTS', unpack(touched))
  if redis.call('ZREM', base .. 'hs', member) == 0 then
    return false
  end
  if kc then
    redis.call('ZREM', base .. 'cc:' .. kid, hid)
  end
  if pc then
    redis.call('ZREM', base .. 'cc:' .. pid, hid)
  end
  if not expired and (kt > 0 or pt > 0) then
    local now = now_ms()
    local u = used or 0
    g_correct(base .. 'w:' .. kid .. ':t', kt, p, now, tokens, u)
    g_correct(base .. 'w:' .. pid .. ':t', pt, p, now, tokens, u)
  end
  return amount, kid, pid
end

-- Give a closed hold's amount back (the account's and its owners' held amounts).
local function unhold(acct, amount, kid, pid)
  redis.call('HINCRBY', acct, 'held', I(-amount))
  redis.call('HINCRBY', acct, 'h:' .. kid, I(-amount))
  redis.call('HINCRBY', acct, 'h:' .. pid, I(-amount))
end

-- Release the holds of this account whose time ran out (their instance died or hung), and
-- keep the account's "pn" field: a time no later than the earliest expiry among its open
-- holds (never-ending when it has none). admit purges only once "pn" has passed, so an
-- expired hold is still released by the very next admit, and the others skip the purge.
local function purge(base, acct, now, p)
  local expired = redis.call('ZRANGEBYSCORE', base .. 'hs', '-inf', now, 'LIMIT', 0, 64)
  for _, member in ipairs(expired) do
    local amount, kid, pid = close_hold(base, member, p, nil, true)
    if amount then
      unhold(acct, amount, kid, pid)
    end
  end
  local first = redis.call('ZRANGE', base .. 'hs', 0, 0, 'WITHSCORES')
  local pn = MAX_NANO -- no open hold
  if first[2] then
    pn = tonumber(first[2])
  end
  redis.call('HSET', acct, 'pn', I(pn))
  return pn
end

local function base_of(keys)
  return string.sub(keys[1], 1, -2) -- "P:{A}:a" -> "P:{A}:"
end

-- Check one owner's limits (key, then project) without taking anything.
-- lim = {rpm, tpm, monthly, daily, concurrency}; budgets < 0 mean none; held and the
-- spend of today and this month come from the account hash (v).
local function refusal(base, owner, kind, lim, now, p, tokens, amount, held, day_spent, month_spent)
  if lim[5] > 0 and redis.call('ZCARD', base .. 'cc:' .. owner) >= lim[5] then
    return {'concurrency', kind, lim[5], 1000}
  end
  if lim[1] > 0 then
    local rel = g_load(base .. 'w:' .. owner .. ':r', lim[1], now)
    if not g_fits(rel, lim[1], p, 1) then
      return {'rpm', kind, lim[1], g_retry(rel, lim[1], p, 1)}
    end
  end
  if lim[2] > 0 then
    local rel = g_load(base .. 'w:' .. owner .. ':t', lim[2], now)
    if not g_fits(rel, lim[2], p, tokens) then
      return {'tpm', kind, lim[2], g_retry(rel, lim[2], p, tokens)}
    end
  end
  if lim[4] >= 0 and day_spent + held + amount > lim[4] then
    return {'daily', kind, lim[4], day_spent + held}
  end
  if lim[3] >= 0 and month_spent + held + amount > lim[3] then
    return {'monthly', kind, lim[3], month_spent + held}
  end
  return nil
end

local function take(base, owner, lim, now, p, tokens, hid, expiry)
  if lim[5] > 0 then
    redis.call('ZADD', base .. 'cc:' .. owner, I(expiry), hid)
  end
  if lim[1] > 0 then
    local key = base .. 'w:' .. owner .. ':r'
    g_save(key, g_load(key, lim[1], now) + p, lim[1], now)
  end
  if lim[2] > 0 then
    local key = base .. 'w:' .. owner .. ':t'
    g_save(key, g_load(key, lim[2], now) + tokens * p, lim[2], now)
  end
end

-- The limits part of an admit (only for a key or project that has limits): check, take,
-- and the rate-limit figures for the response headers. args[o + i] is the admit's i-th
-- argument; V the account hash as the call sees it (see run_ops).
local function admit_limits(base, args, o, V, now, p, tokens, amount, hid, expiry)
  local kid, pid, month, day = args[o + 2], args[o + 3], args[o + 10], args[o + 11]
  local klim = {tonumber(args[o + 13]), tonumber(args[o + 14]), tonumber(args[o + 15]), tonumber(args[o + 16]), tonumber(args[o + 17])}
  local plim = {tonumber(args[o + 18]), tonumber(args[o + 19]), tonumber(args[o + 20]), tonumber(args[o + 21]), tonumber(args[o + 22])}
  local hk, hp = V['h:' .. kid], V['h:' .. pid]
  local km, pm = V['s:' .. kid .. ':' .. month], V['s:' .. pid .. ':' .. month]
  local r = refusal(base, kid, 'key', klim, now, p, tokens, amount, hk, V['s:' .. kid .. ':' .. day], km)
    or refusal(base, pid, 'project', plim, now, p, tokens, amount, hp, V['s:' .. pid .. ':' .. day], pm)
  if r then
    return r
  end
  take(base, kid, klim, now, p, tokens, hid, expiry)
  take(base, pid, plim, now, p, tokens, hid, expiry)
  local out = {'ok', expiry, 0, 0, 0, 0, 0, 0, -1}
  local howner, hlim = kid, klim
  if klim[1] <= 0 and klim[2] <= 0 then
    howner, hlim = pid, plim
  end
  if hlim[1] > 0 then
    local rel = g_load(base .. 'w:' .. howner .. ':r', hlim[1], now)
    out[3], out[4], out[5] = hlim[1], g_remaining(rel, hlim[1], p), idiv(rel, hlim[1])
  end
  if hlim[2] > 0 then
    local rel = g_load(base .. 'w:' .. howner .. ':t', hlim[2], now)
    out[6], out[7], out[8] = hlim[2], g_remaining(rel, hlim[2], p), idiv(rel, hlim[2])
  end
  if klim[3] >= 0 then
    out[9] = math.max(klim[3] - km - hk - amount, 0)
  elseif plim[3] >= 0 then
    out[9] = math.max(plim[3] - pm - hp - amount, 0)
  end
  return out
end

-- A change to the account hash, kept in S.V and written by run_ops' one HSET at the end.
local function set(S, f, x)
  S.V[f] = x
  if not S.dirty[f] then
    S.dirty[f] = true
    S.dl[#S.dl + 1] = f
  end
end

-- admit: auth + limits + hold.
-- ARGV  ver key_id project_id amount tokens hold_member hold_id hold_ttl_ms window_ms month day
--       expires_at_ms (0: never; the caller's copy, which `ver` vouches for)
--       then, only when the key or its project has any limit:
--       key: rpm tpm monthly daily concurrency   project: rpm tpm monthly daily concurrency
--       (hold_member as described above, built by the caller from these same values)
-- ->    {'ok', expiry_ms} (no limits), or with limits {'ok', expiry_ms, rpm_limit,
--        rpm_remaining, rpm_reset_ms, tpm_limit, tpm_remaining, tpm_reset_ms, monthly_left}
--        (the header owner's windows; 0 limits mean none, monthly_left -1 none)
--       or {'stale'} {'revoked'} {'expired'} {'released'} {'balance', balance, held}
--       or {limit_name, 'key'|'project', limit, retry_ms or used}
-- Without limits it reads and writes only what the hold needs; the spend summaries and
-- windows are read only for a key or project that has limits.
-- r: the operation's record from run_ops: {op, o, n, 'h:'..key, 'h:'..project}.
local function admit_op(S, o, n, r)
  local args, V = S.args, S.V
  local ver, kid, pid, hid = args[o + 1], args[o + 2], args[o + 3], args[o + 7]
  local amount, tokens, member = tonumber(args[o + 4]), tonumber(args[o + 5]), args[o + 6]
  local ttl, p, expires = tonumber(args[o + 8]), tonumber(args[o + 9]), tonumber(args[o + 12])
  local now = S.now
  if expires > 0 and expires <= now then
    return {'expired'}
  end
  if S.tombs and redis.call('EXISTS', S.base .. 'x:' .. hid) == 1 then
    return {'released'} -- its caller gave up and released it already (see release)
  end
  -- The caller read the key (not revoked, not expired), its project and the account's terms
  -- at version `ver`; every change to any of them (revoke included) bumps it. So an equal
  -- `ver` means the caller's copy is exact, and the key needs no read of its own here.
  if S.ver ~= ver then
    local k = redis.call('HGET', S.base .. 'k:' .. kid, 'revoked_at')
    if k and k ~= '' then
      return {'revoked'}
    end
    return {'stale'}
  end
  local held = V.held
  if amount > V.balance - held then
    return {'balance', V.balance, held}
  end
  local expiry = now + ttl
  local out = {'ok', expiry}
  if n > 12 then
    out = admit_limits(S.base, args, o, V, now, p, tokens, amount, hid, expiry)
    if out[1] ~= 'ok' then
      return out
    end
  end
  local hk, hp = r[4], r[5] -- 'h:' .. kid, 'h:' .. pid, built by run_ops
  set(S, 'held', held + amount)
  set(S, hk, V[hk] + amount)
  set(S, hp, V[hp] + amount)
  if expiry < V.pn then
    set(S, 'pn', expiry)
  end
  local h = S.holds
  h[#h + 1] = I(expiry)
  h[#h + 1] = member
  return out
end

-- settle: close the hold, debit the balance (never below zero), write the receipt and
-- the spend summaries. Idempotent by receipt id (a retried settle is a no-op). A hold
-- that expired meanwhile is simply no longer open: the call is billed all the same.
-- ARGV  hold_member receipt_id total upstream used_tokens created_ms month day key_id
--       project_id window_ms receipt_json account_id
-- ->    {total, capped 0/1} | {'dup', total} (already written) | {'noaccount'} (nothing written)
-- r: the operation's record from run_ops: {op, o, n, 'h:'..key, 'h:'..project, receipt key,
-- the five spend fields}, the names built once per call.
local function settle_op(S, o, r)
  local args, V, base = S.args, S.V, S.base
  local member, rid, total = args[o + 1], args[o + 2], tonumber(args[o + 3])
  if not S.id then
    return {'noaccount'}
  end
  local rkey = r[6] -- base .. 'r:' .. rid
  if S.rids[rid] or (S.dups and redis.call('EXISTS', rkey) == 1) then
    return {'dup', redis.call('HGET', rkey, 'c') or total}
  end
  S.rids[rid] = true
  local released
  if string.sub(member, -#PLAIN) == PLAIN then -- no slots, no tokens: its ZREM closes it
    if S.open[member] then
      S.open[member] = nil
      S.zrem[#S.zrem + 1] = member
      released = tonumber(string.match(member, '^[^:]+:(%d+):'))
    end
  else
    released = close_hold(base, member, tonumber(args[o + 11]), tonumber(args[o + 5]), false)
  end
  local held = V.held
  if released then -- the member names this key and project (the caller built it so)
    local hk, hp = r[4], r[5]
    held = held - released
    set(S, 'held', held)
    set(S, hk, V[hk] - released)
    set(S, hp, V[hp] - released)
  end
  local capped = 0
  local w = S.receipts
  w[#w + 1] = rkey
  w[#w + 1] = args[o + 12]
  if total > V.balance - held then
    total = math.max(V.balance - held, 0)
    capped = 1
  end
  w[#w + 1] = capped == 1 and total or false
  set(S, 'balance', V.balance - total)
  for k = 7, 11 do -- the spend summaries: account month, key month and day, project month and day
    local f = r[k]
    set(S, f, V[f] + total)
  end
  S.spent = S.spent + total
  S.rs[#S.rs + 1] = args[o + 6]
  S.rs[#S.rs + 1] = rid
  return {total, capped}
end

-- Run admits and settles of one account, in order, as one atomic step. The account hash is
-- read with one HMGET of every field they need and written back with one HSET of what they
-- changed; the holds they open and close, their receipts and the receipt index are written
-- once each at the end. Everything the operations check is read before anything is
-- written, so a call that fails (a bug) leaves the account as it was, but for the purge of
-- expired holds and, for a key or project with limits, its windows and slots (taken and
-- given back as each operation runs).
-- ARGV  op n arg_1 .. arg_n  [op n arg_1 .. arg_n ...]   op: 'a' admit or 's' settle, with
--       the arguments described above  ->  the operations' replies, in order
local function run_ops(keys, args)
  local base, acct = base_of(keys), keys[1]
  local ops, names, seen = {}, {'ver', 'id', 'balance', 'held', 'pn', 'spent'}, {}
  local tombs, plain, rkeys = {}, {}, {}
  local function need(f)
    if not seen[f] then
      seen[f] = true
      names[#names + 1] = f
    end
  end
  local i = 1
  while i <= #args do
    local op, n = args[i], tonumber(args[i + 1])
    local o = i + 1 -- args[o + k]: the operation's k-th argument
    local kid, pid, r
    if op == 'a' then
      kid, pid = args[o + 2], args[o + 3]
      r = {op, o, n, 'h:' .. kid, 'h:' .. pid}
      tombs[#tombs + 1] = base .. 'x:' .. args[o + 7]
      if n > 12 then
        local month, day = args[o + 10], args[o + 11]
        need('s:' .. kid .. ':' .. day)
        need('s:' .. kid .. ':' .. month)
        need('s:' .. pid .. ':' .. day)
        need('s:' .. pid .. ':' .. month)
      end
    elseif op == 's' then
      local member, month, day = args[o + 1], args[o + 7], args[o + 8]
      kid, pid = args[o + 9], args[o + 10]
      r = {op, o, n, 'h:' .. kid, 'h:' .. pid, base .. 'r:' .. args[o + 2], 's:' .. args[o + 13] .. ':' .. month,
        's:' .. kid .. ':' .. month, 's:' .. kid .. ':' .. day, 's:' .. pid .. ':' .. month, 's:' .. pid .. ':' .. day}
      for k = 7, 11 do
        need(r[k])
      end
      if string.sub(member, -#PLAIN) == PLAIN then
        plain[#plain + 1] = member
      end
      rkeys[#rkeys + 1] = r[6]
    else
      return redis.error_reply('meshfast: unknown operation ' .. tostring(op))
    end
    need(r[4])
    need(r[5])
    ops[#ops + 1] = r
    i = o + n + 1
  end
  local vals = redis.call('HMGET', acct, unpack(names))
  local now = 0
  if #tombs > 0 then
    now = now_ms()
    if now >= (tonumber(vals[5]) or 0) then -- an open hold may have expired: release it first
      purge(base, acct, now, 0)
      vals = redis.call('HMGET', acct, unpack(names))
    end
  end
  local V = {}
  for k = 3, #names do
    V[names[k]] = tonumber(vals[k]) or 0
  end
  local S = {
    args = args, base = base, V = V, now = now, ver = vals[1] or '0', id = vals[2],
    dirty = {}, dl = {}, holds = {}, zrem = {}, receipts = {}, rs = {}, rids = {}, open = {}, spent = 0,
    -- one EXISTS each for all tombstones and all receipts; an operation checks its own only
    -- when one of them exists (a late admit, a retried settle)
    tombs = #tombs > 0 and redis.call('EXISTS', unpack(tombs)) > 0,
    dups = #rkeys > 0 and redis.call('EXISTS', unpack(rkeys)) > 0,
  }
  if #plain > 0 then
    local scores = redis.call('ZMSCORE', base .. 'hs', unpack(plain))
    for k, m in ipairs(plain) do
      if scores[k] then
        S.open[m] = true
      end
    end
  end
  local out = {}
  for k, op in ipairs(ops) do
    if op[1] == 'a' then
      out[k] = admit_op(S, op[2], op[3], op)
    else
      out[k] = settle_op(S, op[2], op)
    end
  end
  -- the writes
  local w = S.receipts
  for k = 1, #w, 3 do
    if w[k + 2] then -- capped at what the balance could cover
      redis.call('HSET', w[k], 'j', w[k + 1], 'c', I(w[k + 2]))
    else
      redis.call('HSET', w[k], 'j', w[k + 1])
    end
  end
  if #S.holds > 0 then
    redis.call('ZADD', base .. 'hs', unpack(S.holds))
  end
  if #S.zrem > 0 then
    redis.call('ZREM', base .. 'hs', unpack(S.zrem))
  end
  if S.spent > 0 then -- a lifetime total: past 2^53 it is added by HINCRBY, exactly
    if V.spent + S.spent < MAX_NANO then
      set(S, 'spent', V.spent + S.spent)
    else
      redis.call('HINCRBY', acct, 'spent', I(S.spent))
    end
  end
  if #S.dl > 0 then
    local hw = {}
    for _, f in ipairs(S.dl) do
      hw[#hw + 1] = f
      hw[#hw + 1] = I(V[f])
    end
    redis.call('HSET', acct, unpack(hw))
  end
  if #S.rs > 0 then
    redis.call('ZADD', base .. 'rs', unpack(S.rs))
  end
  return out
end

-- One operation alone, with its arguments as ARGV (retries and tools use these).
local function one(op)
  return function(keys, args)
    local a = {op, #args}
    for k = 1, #args do
      a[k + 2] = args[k]
    end
    return run_ops(keys, a)[1]
  end
end
local admit, settle = one('a'), one('s')

-- release: nothing to bill; give the hold back (tokens reservation included). Safe to
-- repeat: a hold already closed is left alone.
-- KEYS P:{A}:a   ARGV hold_member window_ms hold_ttl_ms   -> 1 if the hold was open
-- A release that finds no open hold leaves a tombstone for the hold id (kept for the
-- hold's lifetime, ARGV[3] ms): an admit that was sent before it but arrives after it (a
-- connection cut off, a retransmission) is then refused instead of holding forever.
local function release(keys, args)
  local base = base_of(keys)
  local amount, kid, pid = close_hold(base, args[1], tonumber(args[2]), nil, false)
  if not amount then
    local hid = string.match(args[1], '^([^:]+):')
    if hid then
      redis.call('SET', base .. 'x:' .. hid, '1', 'PX', args[3] or '900000')
    end
    return 0
  end
  unhold(keys[1], amount, kid, pid)
  return 1
end

-- revoke: mark the key revoked (once), bump the account's ver, and announce it on the
-- revocation channel so every instance ends the key's streams and acknowledges.
-- KEYS P:{A}:a   ARGV key_id revoked_at channel nonce   -> revoked_at, or false if no such key
local function revoke(keys, args)
  local base = base_of(keys)
  local kkey = base .. 'k:' .. args[1]
  if redis.call('EXISTS', kkey) == 0 then
    return false
  end
  local at = redis.call('HGET', kkey, 'revoked_at')
  if not at or at == '' then
    at = args[2]
    redis.call('HSET', kkey, 'revoked_at', at)
    new_ver(keys[1])
  end
  redis.call('PUBLISH', args[3], args[4] .. ' ' .. args[1])
  return at
end

-- topup: credit once per (chain, tx).  KEYS P:{A}:a   ARGV field amount topup_json
-- -> {'ok', balance} | {'dup', existing_json} | {'max', balance}
local function topup(keys, args)
  local base = base_of(keys)
  local existing = redis.call('HGET', base .. 'tu', args[1])
  if existing then
    return {'dup', existing}
  end
  local amount = tonumber(args[2])
  local balance = num(redis.call('HGET', keys[1], 'balance'))
  if balance + amount > MAX_NANO then
    return {'max', balance}
  end
  redis.call('HSET', base .. 'tu', args[1], args[3])
  redis.call('HINCRBY', keys[1], 'topped', I(amount))
  return {'ok', redis.call('HINCRBY', keys[1], 'balance', I(amount))}
end

-- context: what an instance caches for a key: the key, its account and its project.
-- KEYS P:{A}:a   ARGV key_id   -> {key fields, account fields, project fields} (flat lists)
local function context(keys, args)
  local base = base_of(keys)
  local k = redis.call('HGETALL', base .. 'k:' .. args[1])
  if #k == 0 then
    return {k, {}, {}}
  end
  local pid = redis.call('HGET', base .. 'k:' .. args[1], 'project_id')
  local a = redis.call('HMGET', keys[1], 'id', 'name', 'balance', 'held', 'margin_ppm', 'fee_nano', 'created', 'ver')
  return {k, a, redis.call('HGETALL', base .. 'p:' .. pid)}
end

-- bump: something instances cache changed (limits, expiry): HSET fields and bump ver.
-- KEYS P:{A}:a   ARGV hash_suffix field value [field value ...]
local function bump(keys, args)
  local base = base_of(keys)
  local target = base .. args[1]
  if redis.call('EXISTS', target) == 0 then
    return false
  end
  redis.call('HSET', target, unpack(args, 2))
  return new_ver(keys[1])
end

redis.register_function('__LIB___admit', admit)
redis.register_function('__LIB___settle', settle)
redis.register_function('__LIB___batch', run_ops)
redis.register_function('__LIB___release', release)
redis.register_function('__LIB___revoke', revoke)
redis.register_function('__LIB___topup', topup)
redis.register_function('__LIB___context', context)
redis.register_function('__LIB___bump', bump)
