//! The Lua scripts that make the tier's writes and removals conditional
//! inside Redis (see the module above). Each call touches keys of one slot
//! only on a cluster, where a script may not reach across slots.

/// Conditional batch write. KEYS: the ids' keys; ARGV, four per key: the
/// encoded entry, its PX, its version and its origin order (16 hex digits
/// each, compared as strings). Answers per key 0 written, 1 superseded
/// (the version there moved on), 2 older (a higher origin order is there;
/// an entry without an order, 0, is never older). Anything there that is
/// not a PE2 record counts as version 0, order 0.
pub const PUT_SCRIPT: &str = r"
local out = {}
for i, key in ipairs(KEYS) do
  local b = (i - 1) * 4
  local old = redis.call('GET', key)
  local version, order = '0000000000000000', '0000000000000000'
  if old and string.sub(old, 1, 3) == 'PE2' and string.len(old) >= 60 then
    version = string.sub(old, 29, 44)
    order = string.sub(old, 45, 60)
  end
  if version ~= ARGV[b + 3] then
    out[i] = 1
  elseif ARGV[b + 4] ~= '0000000000000000' and order > ARGV[b + 4] then
    out[i] = 2
  else
    redis.call('SET', key, ARGV[b + 1], 'PX', ARGV[b + 2])
    out[i] = 0
  end
end
return out
";

/// Batch removal. KEYS: the ids' keys; ARGV[1] the tombstone's first bytes
/// (`codec::tombstone_head`), ARGV[2] its PX. Each key gets a tombstone with
/// the version after the one it had; answers those versions.
pub const REMOVE_SCRIPT: &str = r"
local out = {}
for i, key in ipairs(KEYS) do
  local old = redis.call('GET', key)
  local v = 0
  if old and string.sub(old, 1, 3) == 'PE2' and string.len(old) >= 60 then
    v = tonumber(string.sub(old, 29, 44), 16) or 0
  end
  v = v + 1
  redis.call('SET', key, ARGV[1] .. string.format('%016x', v) .. '0000000000000000', 'PX', ARGV[2])
  out[i] = v
end
return out
";
