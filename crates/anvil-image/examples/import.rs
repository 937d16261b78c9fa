//! Imports one image into a library directory and prints the report and the
//! wall time: `cargo run --release -p anvil-image --example import -- IMAGE DIR`.
//! Used by scripts/bench/image-import.sh.

use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, image, dir] = args.as_slice() else {
        anyhow::bail!("usage: import IMAGE LIBRARY_DIR");
    };
    let library = anvil_image::ImageLibrary::open(dir)?;
    let started = Instant::now();
    let report = library.import_path(image.as_ref())?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "sha256={} format={} source={} raw={} stored={} zero={} firmware={} seconds={secs:.3}",
        report.sha256,
        report.source_format,
        report.source_size,
        report.raw_size,
        report.stored_size,
        report.zero_bytes,
        report.boot_modes.firmware().unwrap_or("unknown"),
    );
    Ok(())
}
