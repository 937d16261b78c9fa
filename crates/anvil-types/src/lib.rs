//! Anvil's domain vocabulary.
//!
//! Pure data and validation: no I/O, no async, no clock. Every other crate
//! speaks in these types, so a rule written here (which state may follow which,
//! what a valid MAC or hostname is) holds everywhere.

mod ident;
mod inventory;
mod state;

pub use ident::{Hostname, MacAddr, ParseError};
pub use inventory::{
    Architecture, Bmc, BmcDriver, Event, Firmware, Interface, Job, JobStatus, Machine, Token, User,
};
pub use state::{MachineState, TransitionError};
