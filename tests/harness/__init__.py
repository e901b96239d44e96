"""The real parts the tests, bench/ and scripts/ share: Pebble, PostgreSQL, BIND, TLS clients,
processes."""
