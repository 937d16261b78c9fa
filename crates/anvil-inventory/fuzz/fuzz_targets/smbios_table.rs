//! Any bytes as a raw SMBIOS table: parsing must not panic, and what it
//! yields must pass HardwareFacts::validate.
#![no_main]

use anvil_inventory::{HardwareFacts, Memory, SCHEMA_VERSION, smbios};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parsed = smbios::parse(data);
    let facts = HardwareFacts {
        schema_version: SCHEMA_VERSION,
        dmi: parsed.dmi,
        memory: Memory {
            total_bytes: 0,
            dimms: parsed.dimms,
        },
        ..HardwareFacts::default()
    };
    if let Err(e) = facts.validate() {
        panic!("parsed table fails validation: {e}: {facts:?}");
    }
});
