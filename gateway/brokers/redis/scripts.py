"""The Redis key layout, the entries stored in it, and the Lua scripts that change it.

Each script is one atomic step in Redis: every worker sees its effects whole, in one order.

Keys, under a prefix (default `gw`):
  {p}:topics        hash  name -> creation id (its presence is the topic's existence)
  {p}:owners:       hash  name -> id of the user who created it
  {p}:owned:        hash  user id -> topics that user created
  {p}:policies:     hash  name -> "<publish> <subscribe>" (its policies, set at creation)
  {p}:members:{name}  set  user ids of the topic's members
  {p}:seq:{name}    int   the topic's last seq (= messages published since creation)
  {p}:ring:{name}   list  the last stored messages, "seq:body", at most RING_BUFFER_SIZE
                          of them and RING_BUFFER_BYTES together
  {p}:ringbytes:{name}  int  the bytes held by the ring
  {p}:chan:{name}   channel the same "seq:body" entries; "deleted" on deletion, "access"
                          when members change, "revoked:<user id>" when a user loses access
  {p}:workers       zset  worker id -> last heartbeat (unix seconds)
  {p}:subs:{id}     hash  topic -> that worker's local subscriber count (expires)
  {p}:conns:{id}    hash  user id -> that worker's open WebSockets and SSE streams (expires)
  {p}:idem:{n}:{name}:{n}:{user}:{key}  an idempotency key (lengths first, so names with
                          ':' cannot collide) -> "epoch|seq:head" without payload (expires)
  {p}:idemkeys:{name}   list  the topic's idempotency keys, oldest first, capped
  {p}:worker:{id}   channel wakes that worker's listener to subscribe to more channels
"""

from __future__ import annotations

import orjson

from gateway.brokers.contract import Event

# What a topic's channel carries when the topic is deleted (DELETE publishes it).
DELETED = b"deleted"
# What it carries when a user loses access to the topic, before the user id.
REVOKED = b"revoked:"


class Keys:
    """The names of one gateway's keys and channels in Redis, under its prefix."""

    __slots__ = ("prefix", "topics", "workers")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.topics = f"{prefix}:topics"
        self.workers = f"{prefix}:workers"

    def of(self, kind: str, name: str) -> str:
        """Return the key or channel of `kind` for a topic or worker `name`."""
        return f"{self.prefix}:{kind}:{name}"

    def publish(self, topic: str, publisher: str, idempotency_key: str | None) -> list[str]:
        """Return the KEYS of PUBLISH, in its order."""
        idem = f"{len(topic)}:{topic}:{len(publisher)}:{publisher}:{idempotency_key or ''}"
        of = self.of
        return [
            self.topics,
            of("seq", topic),
            of("ring", topic),
            of("chan", topic),
            of("idem", idem),
            of("ringbytes", topic),
            of("idemkeys", topic),
        ]

    def create(self, name: str) -> list[str]:
        """Return the KEYS of CREATE, in its order."""
        of = self.of
        return [
            self.topics,
            of("owners", ""),
            of("owned", ""),
            of("seq", name),
            of("ring", name),
            of("ringbytes", name),
            of("policies", ""),
            of("members", name),
        ]

    def delete(self, name: str) -> list[str]:
        """Return the KEYS of DELETE, in its order."""
        of = self.of
        return [
            self.topics,
            of("seq", name),
            of("ring", name),
            of("chan", name),
            of("owners", ""),
            of("owned", ""),
            of("ringbytes", name),
            of("idemkeys", name),
            of("policies", ""),
            of("members", name),
        ]

    def access(self, name: str) -> list[str]:
        """Return the KEYS of MEMBER, in its order."""
        return [self.topics, self.of("members", name), self.of("chan", name)]


def pack_message(message_id: str, payload: bytes, timestamp: float) -> bytes:
    """Serialise a published message for the ring and the channel (not a wire frame).

    `[id, timestamp]` as JSON, a newline, then the payload's JSON as it was encoded: a
    JSON text has no raw newline, and reading it back never parses the payload.
    """
    return orjson.dumps([message_id, timestamp]) + b"\n" + payload


def unpack_message(data: bytes) -> tuple[str, bytes, float]:
    """Read back what `pack_message` wrote: (id, payload JSON, timestamp)."""
    head, newline, payload = data.partition(b"\n")
    if not newline:
        # Written before payloads were kept encoded: one JSON object (still in a Redis
        # that an older gateway filled).
        message = orjson.loads(data)
        return message["id"], orjson.dumps(message["payload"]), message["timestamp"]
    message_id, timestamp = orjson.loads(head)
    return message_id, payload, timestamp


def read_entry(topic: str, entry: bytes) -> Event:
    """Turn a ring or channel entry, "seq:body", back into an Event."""
    seq, body = entry.split(b":", 1)
    message_id, payload, timestamp = unpack_message(body)
    return Event(topic, message_id, payload, int(seq), timestamp)


# KEYS: topics, seq, ring, chan, idem, ringbytes, idemkeys
# ARGV: name, body, ring size, idempotency ttl ('' = none), ring bytes, keys kept, head,
#       the creation id (epoch) whose access the caller checked ('' = none checked),
#       the highest seq this worker's publishes to the topic got ('' = none) and the epoch
#       it got it in. Returns {seq, entry, epoch}; {0, head} for a repeated key.
PUBLISH = """
local epoch = redis.call('HGET', KEYS[1], ARGV[1])
if not epoch then return {-1, ''} end
-- The access the caller checked belongs to another creation of this name.
if ARGV[8] ~= '' and ARGV[8] ~= epoch then return {-2, ''} end
local idem = ARGV[4] ~= ''
if idem then
  local prev = redis.call('GET', KEYS[5])
  if prev and string.sub(prev, 1, #epoch + 1) == epoch .. '|' then
    return {0, string.sub(prev, #epoch + 2)}
  end
end
local seq = redis.call('INCR', KEYS[2])
-- A floor counts only for the creation of the topic it was seen in (not one made since).
local floor = ARGV[10] == epoch and tonumber(ARGV[9]) or 0
if seq <= floor then
  -- The topic went back (a failover lost writes not yet replicated): seqs up to `floor`
  -- were handed out already. A new epoch, and the seq continues above them.
  epoch = redis.sha1hex(epoch .. ':' .. table.concat(redis.call('TIME'), '.'))
  redis.call('HSET', KEYS[1], ARGV[1], epoch)
  seq = floor + 1
  redis.call('SET', KEYS[2], seq)
end
local entry = seq .. ':' .. ARGV[2]
local keep = tonumber(ARGV[3])
if keep > 0 then
  local most = tonumber(ARGV[5])
  if redis.call('EXISTS', KEYS[6]) == 0 then
    -- A ring without its byte count (kept by an older gateway): count it once.
    local held = 0
    for _, old in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do held = held + #old end
    redis.call('SET', KEYS[6], held)
  end
  redis.call('RPUSH', KEYS[3], entry)
  local size = redis.call('INCRBY', KEYS[6], #entry)
  local count = redis.call('LLEN', KEYS[3])
  while count > 0 and (count > keep or (most > 0 and size > most)) do
    size = redis.call('DECRBY', KEYS[6], #redis.call('LPOP', KEYS[3]))
    count = count - 1
  end
end
if idem then
  local ttl = tonumber(ARGV[4])
  redis.call('SET', KEYS[5], epoch .. '|' .. seq .. ':' .. ARGV[7], 'EX', ttl)
  -- A key used again after it expired is listed once, at the newest end.
  redis.call('LREM', KEYS[7], 0, KEYS[5])
  redis.call('RPUSH', KEYS[7], KEYS[5])
  if redis.call('LLEN', KEYS[7]) > tonumber(ARGV[6]) then
    redis.call('DEL', redis.call('LPOP', KEYS[7]))
  end
  redis.call('EXPIRE', KEYS[7], ttl)
end
redis.call('PUBLISH', KEYS[4], entry)
return {seq, entry, epoch}
"""

# KEYS: topics, owners, owned, seq, ring, ringbytes, policies, members
# ARGV: name, epoch, owner, max, per user, policies
CREATE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
local most = tonumber(ARGV[4])
if most > 0 and redis.call('HLEN', KEYS[1]) >= most then return -1 end
local per_user = tonumber(ARGV[5])
if per_user > 0 and tonumber(redis.call('HGET', KEYS[3], ARGV[3]) or '0') >= per_user then
  return -2
end
redis.call('DEL', KEYS[4], KEYS[5], KEYS[6], KEYS[8])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[7], ARGV[1], ARGV[6])
redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
return 1
"""

# KEYS: topics, seq, ring, chan, owners, owned, ringbytes, idemkeys, policies, members
# ARGV: name, the creation id (epoch) the caller checked ('' = any)
DELETE = """
local epoch = redis.call('HGET', KEYS[1], ARGV[1])
if not epoch then return 0 end
-- The access the caller checked belongs to another creation of this name.
if ARGV[2] and ARGV[2] ~= '' and ARGV[2] ~= epoch then return -1 end
redis.call('HDEL', KEYS[1], ARGV[1])
local owner = redis.call('HGET', KEYS[5], ARGV[1])
if owner then
  redis.call('HDEL', KEYS[5], ARGV[1])
  if redis.call('HINCRBY', KEYS[6], owner, -1) <= 0 then redis.call('HDEL', KEYS[6], owner) end
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[7], KEYS[8], KEYS[10])
redis.call('HDEL', KEYS[9], ARGV[1])
redis.call('PUBLISH', KEYS[4], 'deleted')
return 1
"""

# KEYS: topics, members, chan; ARGV: name, "add" | "remove", user id, "1" to revoke
# Changes a live topic's members and tells every worker listening to its channel, in its
# event order: "revoked:<user>" ends that user's subscriptions, "access" refreshes caches.
MEMBER = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
if ARGV[2] == 'add' then
  redis.call('SADD', KEYS[2], ARGV[3])
else
  redis.call('SREM', KEYS[2], ARGV[3])
end
if ARGV[4] == '1' then
  redis.call('PUBLISH', KEYS[3], 'revoked:' .. ARGV[3])
else
  redis.call('PUBLISH', KEYS[3], 'access')
end
return 1
"""

# KEYS: this worker's connection counts, then every other live worker's; ARGV: user, limit, ttl
CLAIM = """
local limit = tonumber(ARGV[2])
local total = 0
for i = 1, #KEYS do total = total + tonumber(redis.call('HGET', KEYS[i], ARGV[1]) or '0') end
if total >= limit then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""

# KEYS: topics, seq; ARGV: name, the epoch read, a new epoch, the seq this worker delivered
# Redis holds less of the topic than a worker delivered (a failover lost writes that were not
# yet replicated, or a restart lost what was not persisted): the seqs after the one it holds
# were handed out already. Move the topic to a new epoch, so that no resume position of the
# old one passes for complete, and raise its seq to at least what was delivered, so that no
# seq is handed out twice: unless it moved to another epoch since it was read (another
# worker got there first; the caller reads again). Returns {1 if moved, its epoch, its seq}.
REWIND = """
local epoch = redis.call('HGET', KEYS[1], ARGV[1])
local seq = tonumber(redis.call('GET', KEYS[2]) or '0')
if not epoch or epoch ~= ARGV[2] then return {0, epoch or '', seq} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
local last = tonumber(ARGV[4])
if seq < last then
  seq = last
  redis.call('SET', KEYS[2], seq)
end
return {1, ARGV[3], seq}
"""
