//! `collect`: all collectors over one root directory.

use std::path::Path;

use crate::sysfs::Tree;
use crate::{Error, HardwareFacts, Memory, SCHEMA_VERSION, boot, cpu, disks, dmi, memory, nics};

/// Collect the hardware facts of the machine whose /sys, /proc and /dev are
/// below `root` ("/" on the machine itself; tests pass a fixture tree).
/// LLDP is not part of this (it takes a listening window): see
/// [`crate::listen_lldp`]. Missing files are normal and leave fields
/// empty; unreadable or unparsable ones are listed in
/// [`HardwareFacts::problems`]. Fails only if `root` is not a directory.
///
/// On the live system (`root` is "/") NIC firmware versions and permanent
/// MACs are asked from the drivers by ethtool ioctls.
pub fn collect(root: &Path) -> Result<HardwareFacts, Error> {
    let live = std::fs::canonicalize(root).is_ok_and(|r| r == Path::new("/"));
    collect_with(root, live)
}

/// [`collect`], choosing whether to ask live drivers (ethtool ioctls).
pub fn collect_with(root: &Path, live: bool) -> Result<HardwareFacts, Error> {
    std::fs::read_dir(root).map_err(|source| Error::BadRoot {
        path: root.to_path_buf(),
        source,
    })?;
    let mut tree = Tree::new(root);
    let cpu = cpu::collect(&mut tree);
    let total_bytes = tree
        .text("/proc/meminfo")
        .and_then(|t| memory::parse_meminfo_total(&t))
        .unwrap_or(0);
    let (dmi, dimms) = dmi::collect(&mut tree);
    let disks = disks::collect(&mut tree);
    let nics = nics::collect(&mut tree, live);
    let boot = boot::collect(&mut tree);
    Ok(HardwareFacts {
        schema_version: SCHEMA_VERSION,
        cpu,
        memory: Memory { total_bytes, dimms },
        disks,
        nics,
        dmi,
        boot,
        lldp: Vec::new(),
        problems: tree.problems,
    })
}
