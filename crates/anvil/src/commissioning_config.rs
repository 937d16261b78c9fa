//! The `[commissioning]` section of the `anvil serve` configuration, and how
//! it becomes `anvil_core::commission::CommissioningConfig`.

use anvil_core::commission::CommissioningConfig;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommissioningSection {
    /// A run that has not ended after this many seconds fails, naming the
    /// step that hung (MAAS's default: 20 minutes).
    pub timeout_secs: u64,
    /// Power the machine off through its BMC when commissioning succeeds.
    pub power_off_when_done: bool,
    /// How long the inventory listens for LLDP on every connected interface.
    pub lldp_window_secs: u32,
    /// Commission machines the first time they PXE-boot (discovery and
    /// commissioning in one boot).
    pub on_discovery: bool,
    /// Bounds of the optional hardware tests.
    pub cpu_test_secs: u32,
    pub memory_test_percent: u8,
    pub memory_test_max_bytes: u64,
    pub memory_test_secs: u32,
    pub disk_test_bytes_per_disk: u64,
    pub disk_test_secs: u32,
}

impl Default for CommissioningSection {
    fn default() -> Self {
        let d = CommissioningConfig::default();
        CommissioningSection {
            timeout_secs: d.timeout.as_secs(),
            power_off_when_done: d.power_off_when_done,
            lldp_window_secs: d.lldp_window_secs,
            on_discovery: d.on_discovery,
            cpu_test_secs: d.cpu_test_secs,
            memory_test_percent: d.memory_test_percent,
            memory_test_max_bytes: d.memory_test_max_bytes,
            memory_test_secs: d.memory_test_secs,
            disk_test_bytes_per_disk: d.disk_test_bytes_per_disk,
            disk_test_secs: d.disk_test_secs,
        }
    }
}

impl CommissioningSection {
    pub fn settings(&self) -> CommissioningConfig {
        let d = CommissioningConfig::default();
        let timeout = Duration::from_secs(self.timeout_secs.max(1));
        CommissioningConfig {
            timeout,
            power_off_when_done: self.power_off_when_done,
            lldp_window_secs: self.lldp_window_secs,
            on_discovery: self.on_discovery,
            cpu_test_secs: self.cpu_test_secs.max(1),
            memory_test_percent: self.memory_test_percent.clamp(1, 90),
            memory_test_max_bytes: self.memory_test_max_bytes,
            memory_test_secs: self.memory_test_secs.max(1),
            disk_test_bytes_per_disk: self.disk_test_bytes_per_disk,
            disk_test_secs: self.disk_test_secs.max(1),
            // Short timeouts (tests) are noticed within a second.
            watch_interval: d
                .watch_interval
                .min(timeout / 2)
                .max(Duration::from_millis(200)),
            ..d
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_maas_like_and_map_through() {
        let s = CommissioningSection::default().settings();
        assert_eq!(s.timeout, Duration::from_secs(1200));
        assert!(s.power_off_when_done);
        assert_eq!(s.lldp_window_secs, 30);
        assert!(!s.on_discovery);
        let short = CommissioningSection {
            timeout_secs: 1,
            memory_test_percent: 200,
            ..Default::default()
        }
        .settings();
        assert_eq!(short.watch_interval, Duration::from_millis(500));
        assert_eq!(short.memory_test_percent, 90);
    }
}
