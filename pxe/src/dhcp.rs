//! DHCP server (RFC 2131/2132, 4578): being written.
