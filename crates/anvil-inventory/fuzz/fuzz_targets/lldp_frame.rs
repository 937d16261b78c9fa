//! Any bytes as an Ethernet frame: parsing must not panic, and whatever
//! parses must pass HardwareFacts::validate (a switch sending odd TLVs must
//! not get a whole commissioning report rejected).
#![no_main]

use anvil_inventory::{HardwareFacts, SCHEMA_VERSION, lldp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(mut neighbor) = lldp::parse_frame(data) {
        neighbor.interface = "eth0".into();
        let facts = HardwareFacts {
            schema_version: SCHEMA_VERSION,
            lldp: vec![neighbor],
            ..HardwareFacts::default()
        };
        if let Err(e) = facts.validate() {
            panic!("parsed neighbour fails validation: {e}: {facts:?}");
        }
    }
});
