//! Any datagram: decoding must not panic, and what decodes must survive an
//! encode/decode round trip unchanged.
#![no_main]

use anvil_tftp::proto::Packet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(packet) = Packet::decode(data) {
        let wire = packet.to_vec();
        assert_eq!(Packet::decode(&wire), Ok(packet));
    }
});
