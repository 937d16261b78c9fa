//! The `[deploy]` section of the `anvil serve` configuration, and how it
//! becomes `anvil_core::deploy::DeployConfig`.

use anvil_core::deploy::DeployConfig;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeploySection {
    /// A deployment, release or rescue boot that has not ended after this
    /// many seconds fails, naming the step that hung (40 minutes by default:
    /// a large image over a slow link).
    #[serde(alias = "timeout")]
    pub timeout_secs: u64,
}

impl Default for DeploySection {
    fn default() -> Self {
        DeploySection {
            timeout_secs: DeployConfig::default().timeout.as_secs(),
        }
    }
}

impl DeploySection {
    pub fn settings(&self) -> DeployConfig {
        DeployConfig {
            timeout: Duration::from_secs(self.timeout_secs.max(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forty_minutes_by_default_and_configurable() {
        assert_eq!(
            DeploySection::default().settings().timeout,
            Duration::from_secs(2400)
        );
        let s: DeploySection = toml::from_str("timeout_secs = 600").unwrap();
        assert_eq!(s.settings().timeout, Duration::from_secs(600));
        let s: DeploySection = toml::from_str("timeout = 90").unwrap();
        assert_eq!(s.settings().timeout, Duration::from_secs(90));
        assert!(toml::from_str::<DeploySection>("timeuot = 90").is_err());
    }
}
