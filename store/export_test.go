package store

// TakenKeyForTest and SlotForTest expose the take's key and Redis
// Cluster's slot of a key to the external tests.
func TakenKeyForTest(inboxKey, token string) string { return takenKey(inboxKey, token) }

func SlotForTest(key string) uint16 { return crc16(hashTag(key)) % 16384 }
