//! Serves a directory over TFTP until Ctrl-C, logging each transfer:
//!
//! ```sh
//! cargo run -p anvil-tftp --example tftp-serve -- /usr/lib/ipxe 127.0.0.1:6969
//! ```

use anvil_tftp::{DirSource, NoopObserver, TftpConfig};
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let root = args.next().ok_or("usage: tftp-serve ROOT [LISTEN]")?;
    let listen = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:6969".into())
        .parse()?;
    // Debian's ipxe package links ipxe.efi to /boot/ipxe.efi.
    let mut source = DirSource::new(&root)?;
    if std::path::Path::new("/boot").is_dir() {
        source = source.allow_symlinks_into("/boot")?;
    }
    let config = TftpConfig {
        listen,
        ..TftpConfig::default()
    };
    anvil_tftp::run(config, Arc::new(source), Arc::new(NoopObserver), async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
