//! TLS for the NetBox client: the same rules as every outbound HTTPS client
//! of Anvil (ring as the provider, system roots or a pinned CA, an explicit
//! opt-out), from the shared `anvil-tls` crate.

pub(crate) use anvil_tls::{TlsSetupError, client_config};
