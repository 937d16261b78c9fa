//! Runs the DHCP service alone, from a TOML file holding a `[dhcp]`-style
//! table (the keys of `DhcpConfig`), with leases in memory and no inventory.
//! Prints every observation. For manual tests and packet captures:
//!
//! ```text
//! cargo run -p anvil-dhcp --example dhcp-serve -- dhcp.toml
//! ```

use anvil_dhcp::{DhcpConfig, DhcpObservation, DhcpObserver, MemoryLeaseStore, StaticBootFacts};
use std::sync::Arc;

struct Print;

impl DhcpObserver for Print {
    fn observe(&self, ev: DhcpObservation) {
        println!(
            "{} {} {} ip={:?} class={} boot={:?}",
            ev.network,
            ev.kind.as_str(),
            ev.mac,
            ev.ip,
            ev.class.kind.as_str(),
            ev.boot
        );
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: dhcp-serve CONFIG.toml")?;
    let config: DhcpConfig = toml::from_str(&std::fs::read_to_string(path)?)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(anvil_dhcp::run(
        config,
        Arc::new(MemoryLeaseStore::new()),
        Arc::new(StaticBootFacts::new()),
        Arc::new(Print),
        async {
            let _ = tokio::signal::ctrl_c().await;
        },
    ))?;
    Ok(())
}
