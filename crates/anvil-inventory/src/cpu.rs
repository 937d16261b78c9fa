//! CPU: /proc/cpuinfo for model, vendor, flags and clock; the sysfs CPU
//! topology for sockets and cores (cpuinfo's "physical id"/"core id" when
//! sysfs lacks it).

use std::collections::BTreeSet;

use crate::Cpu;
use crate::sysfs::Tree;

/// CPU flags worth storing: virtualization, crypto and vector extensions and
/// a few that placement or images care about. The full list is ~150 flags
/// of noise.
pub const INTERESTING_FLAGS: &[&str] = &[
    // virtualization
    "vmx",
    "svm",
    "ept",
    "npt",
    "hypervisor", // crypto
    "aes",
    "vaes",
    "pclmulqdq",
    "sha_ni",
    "rdrand",
    "rdseed", // vectors
    "sse4_1",
    "sse4_2",
    "ssse3",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512cd",
    "avx512dq",
    "avx512vl",
    "avx512_vnni",
    "amx_tile", // platform
    "lm",
    "nx",
    "pdpe1gb",
    "x2apic",
    "popcnt",
    "bmi1",
    "bmi2",
    "movbe",
    "sgx",
    "sev",
    "sev_es",
    "sev_snp",
    "tme", // aarch64 "Features"
    "asimd",
    "sha1",
    "sha2",
    "sha512",
    "sve",
    "sve2",
    "atomics",
    "crc32",
];

/// What one /proc/cpuinfo holds, before topology is merged in.
#[derive(Debug, Default, PartialEq)]
pub struct CpuInfo {
    pub model: Option<String>,
    pub vendor: Option<String>,
    /// Logical CPUs listed ("processor" entries).
    pub processors: u32,
    /// Distinct "physical id" values.
    pub packages: BTreeSet<u32>,
    /// Distinct ("physical id", "core id") pairs.
    pub cores: BTreeSet<(u32, u32)>,
    pub flags: Vec<String>,
    pub mhz: Option<u32>,
}

/// Parse /proc/cpuinfo (x86 and aarch64 layouts).
pub fn parse_cpuinfo(text: &str) -> CpuInfo {
    let mut info = CpuInfo::default();
    let mut flags = BTreeSet::new();
    for block in text.split("\n\n") {
        let mut physical: Option<u32> = None;
        let mut core: Option<u32> = None;
        let mut is_processor = false;
        for line in block.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let (key, value) = (key.trim(), value.trim());
            match key {
                "processor" if value.parse::<u32>().is_ok() => is_processor = true,
                "model name" | "Processor" if info.model.is_none() && !value.is_empty() => {
                    info.model = Some(value.to_string())
                }
                "vendor_id" | "CPU implementer" if info.vendor.is_none() && !value.is_empty() => {
                    info.vendor = Some(value.to_string())
                }
                "physical id" => physical = value.parse().ok(),
                "core id" => core = value.parse().ok(),
                "cpu MHz" if info.mhz.is_none() => {
                    info.mhz = value.parse::<f64>().ok().map(|m| m.round() as u32)
                }
                "flags" | "Features" => {
                    flags.extend(
                        value
                            .split_whitespace()
                            .filter(|f| INTERESTING_FLAGS.contains(f))
                            .map(str::to_string),
                    );
                }
                _ => {}
            }
        }
        if is_processor {
            info.processors += 1;
            if let Some(p) = physical {
                info.packages.insert(p);
                if let Some(c) = core {
                    info.cores.insert((p, c));
                }
            }
        }
    }
    info.flags = flags.into_iter().collect();
    info
}

pub(crate) fn collect(tree: &mut Tree) -> Cpu {
    let info = tree
        .text("/proc/cpuinfo")
        .map(|t| parse_cpuinfo(&t))
        .unwrap_or_default();

    // sysfs topology covers architectures whose cpuinfo has no topology.
    let mut packages = BTreeSet::new();
    let mut cores = BTreeSet::new();
    let mut online = 0u32;
    for name in tree.list("/sys/devices/system/cpu") {
        let Some(n) = name.strip_prefix("cpu") else {
            continue;
        };
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // Offline CPUs have no topology directory.
        let topo = tree.path(format!("/sys/devices/system/cpu/{name}/topology"));
        let Some(pkg) = tree.number_at::<i64>(&topo.join("physical_package_id")) else {
            continue;
        };
        let core = tree.number_at::<i64>(&topo.join("core_id")).unwrap_or(-1);
        online += 1;
        packages.insert(pkg);
        cores.insert((pkg, core));
    }

    let threads = if info.processors > 0 {
        info.processors
    } else {
        online
    };
    let (sockets, core_count) = if online > 0 {
        (packages.len() as u32, cores.len() as u32)
    } else if !info.packages.is_empty() {
        (info.packages.len() as u32, info.cores.len().max(1) as u32)
    } else if threads > 0 {
        // Nothing says otherwise: one socket, one thread per core.
        (1, threads)
    } else {
        (0, 0)
    };
    Cpu {
        model: info.model,
        vendor: info.vendor,
        sockets,
        cores: core_count,
        threads,
        flags: info.flags,
        mhz: info.mhz,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_aarch64_cpuinfo() {
        // Ampere Altra layout: no model name, no topology, "Features".
        let text = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics\nCPU implementer\t: 0x41\nCPU architecture: 8\n\nprocessor\t: 1\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics\nCPU implementer\t: 0x41\n\n";
        let info = parse_cpuinfo(text);
        assert_eq!(info.processors, 2);
        assert_eq!(info.model, None);
        assert_eq!(info.vendor.as_deref(), Some("0x41"));
        assert_eq!(
            info.flags,
            ["aes", "asimd", "atomics", "crc32", "sha1", "sha2"]
        );
        assert!(info.packages.is_empty());
    }

    #[test]
    fn garbage_is_not_a_processor() {
        let info = parse_cpuinfo("processor : x\nflags : vmx\n\nnonsense\n\n");
        assert_eq!(info.processors, 0);
        assert_eq!(info.flags, ["vmx"]);
        assert_eq!(parse_cpuinfo(""), CpuInfo::default());
    }
}
