//! TLS for BMCs: the rules every outbound HTTPS client of Anvil shares (ring
//! as the provider, system roots or a pinned CA, and `verify_tls = false` for
//! BMCs that ship self-signed certificates for their IP address), from the
//! shared `anvil-tls` crate.

pub(crate) use anvil_tls::{TlsSetupError, client_config, find_tls_error};
