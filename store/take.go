package store

import (
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Taking an inbox exactly once. go-redis sends a command (or a pipeline)
// again when its connection fails after the command was written: Redis
// may have run it already, and a second plain take would find the inbox
// empty, the first take's messages lost with the reply that never came.
// So a take is named (its token) and leaves what it took under a key of
// that name for takenTTL: a take sent again with the same token returns
// the same messages. A new take (a new token) moves what arrived since.

// takenTTL is how long a take's result is kept for a retry of the same take.
const takenTTL = 60_000 // ms

const takenKeyPrefix = "chatrelay:taken:"

// takeInboxScript moves KEYS[1] (the inbox) to KEYS[2] (the take's key)
// and returns it, oldest first; if KEYS[2] exists, this take already ran
// and its result is returned again.
var takeInboxScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[2]) == 1 then
  return redis.call('LRANGE', KEYS[2], 0, -1)
end
local v = redis.call('LRANGE', KEYS[1], 0, -1)
if #v > 0 then
  redis.call('RENAME', KEYS[1], KEYS[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[1])
end
return v
`)

// takenKey is the key a take of inboxKey named token leaves its result
// under. It is in the inbox key's Cluster hash slot, so the script touches
// one slot.
func takenKey(inboxKey, token string) string {
	tag := hashTag(inboxKey)
	if strings.ContainsAny(tag, "{}") {
		// The tag cannot be written inside braces: use another string of
		// the same slot.
		tag = sameSlot(tag)
	}
	return takenKeyPrefix + "{" + tag + "}:" + token
}

// hashTag is the part of key Redis Cluster hashes: the text between the
// first '{' and the next '}', if not empty, else the whole key.
func hashTag(key string) string {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			return key[i+1 : i+1+j]
		}
	}
	return key
}

// sameSlot returns a short string without braces in the hash slot of s.
func sameSlot(s string) string {
	want := crc16(s) % 16384
	for n := 0; ; n++ {
		c := "s" + strconv.Itoa(n)
		if crc16(c)%16384 == want {
			return c
		}
	}
}

// crc16 is CRC-16/XMODEM, the hash of Redis Cluster's key slots.
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}
