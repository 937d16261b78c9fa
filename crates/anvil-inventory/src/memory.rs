//! Memory total from /proc/meminfo (DIMMs come from SMBIOS, see `smbios`).

/// `MemTotal` in bytes, from /proc/meminfo text.
pub fn parse_meminfo_total(text: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix("MemTotal:")?;
        let mut words = rest.split_whitespace();
        let value: u64 = words.next()?.parse().ok()?;
        let multiplier = match words.next() {
            Some("kB") | Some("KB") => 1024,
            None => 1,
            Some(_) => return None,
        };
        value.checked_mul(multiplier)
    })
}
