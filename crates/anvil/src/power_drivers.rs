//! The real BMC drivers behind the application's `DriverFactory`.
//!
//! Drivers are cached per BMC and credentials, so a Redfish session or an
//! IPMI RMCP+ session is reused by later actions and by the power-state
//! poller instead of logging in again on every call.

use anvil_core::power::DriverFactory;
use anvil_power::{BmcCredentials, PowerDriver, PowerError};
use anvil_types::BmcDriver;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct Drivers {
    cache: Mutex<HashMap<String, Arc<dyn PowerDriver>>>,
}

/// Identifies a driver: the BMC and a hash of the credentials, so changed
/// credentials get a new session (and the password is not kept as a key).
fn key(driver: BmcDriver, c: &BmcCredentials) -> String {
    let mut h = Sha256::new();
    h.update(c.username.as_deref().unwrap_or("").as_bytes());
    h.update([0]);
    h.update(c.password.as_deref().unwrap_or("").as_bytes());
    h.update([c.verify_tls as u8]);
    format!("{driver}|{}|{:?}|{:x}", c.address, c.port, h.finalize())
}

impl DriverFactory for Drivers {
    fn driver(
        &self,
        driver: BmcDriver,
        creds: BmcCredentials,
    ) -> Result<Arc<dyn PowerDriver>, PowerError> {
        let k = key(driver, &creds);
        if let Ok(cache) = self.cache.lock()
            && let Some(d) = cache.get(&k)
        {
            return Ok(d.clone());
        }
        let d: Arc<dyn PowerDriver> = match driver {
            BmcDriver::Redfish => Arc::new(anvil_power_redfish::RedfishDriver::new(
                creds,
                anvil_power_redfish::RedfishOptions::default(),
            )?),
            BmcDriver::Ipmi => Arc::new(anvil_power_ipmi::IpmiDriver::new(
                &creds,
                anvil_power_ipmi::IpmiOptions::default(),
            )?),
        };
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(k, d.clone());
        }
        Ok(d)
    }
}
