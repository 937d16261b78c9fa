use thiserror::Error;

/// Everything that makes a deployment's cloud-init data impossible to render.
/// Each variant names the offending value so the operator can fix the input.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Error {
    #[error("invalid hostname {value:?}: {reason}")]
    Hostname { value: String, reason: &'static str },
    #[error("invalid DNS domain {value:?}: {reason}")]
    Domain { value: String, reason: &'static str },
    #[error("invalid instance id {value:?}: {reason}")]
    InstanceId { value: String, reason: &'static str },
    #[error("SSH public key #{index} is invalid: {reason}")]
    SshKey { index: usize, reason: String },
    #[error("invalid MAC address {value:?}")]
    Mac { value: String },
    #[error("invalid interface name {value:?}: {reason}")]
    InterfaceName { value: String, reason: &'static str },
    #[error("interface name {name:?} is used twice")]
    DuplicateName { name: String },
    #[error("MAC address {mac} is listed twice")]
    DuplicateMac { mac: String },
    #[error("invalid address {value:?}: {reason}")]
    Address { value: String, reason: &'static str },
    #[error("{device}: {reason}")]
    Device { device: String, reason: String },
    #[error("bond {bond}: {reason}")]
    Bond { bond: String, reason: String },
    #[error("VLAN {vlan}: {reason}")]
    Vlan { vlan: String, reason: String },
    #[error("more than one IPv{family} default route ({first} and {second})")]
    TwoDefaultRoutes {
        family: u8,
        first: String,
        second: String,
    },
    #[error("the boot NIC {mac} is not among the machine's NICs")]
    BootNicUnknown { mac: String },
    #[error("disk layout: {reason}")]
    Layout { reason: String },
}
