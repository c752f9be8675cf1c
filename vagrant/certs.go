package vagrant

// Where the VMs keep the TLS files (provision.sh installs them there). The
// certificates themselves are keepalived.WriteCerts', made from the
// topology.
const (
	TLSDir      = EtcDir + "/tls"  // the CA certificate and the chatrelay services' certificates
	RedisTLSDir = "/etc/redis/tls" // Redis's certificate, and a copy of the CA's, labelled for Redis
)
