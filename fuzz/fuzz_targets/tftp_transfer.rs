//! The read-transfer state machine under hostile peers: arbitrary options,
//! limits and file sizes, then an arbitrary sequence of ACKs (mostly near the
//! window, as an attacker on the path would send), ERRORs, garbage and
//! timeouts. It must not panic, must only read forward, must never send a
//! DATA payload larger than the negotiated blksize, and must stop acting
//! once it reported the end.
#![no_main]

use anvil_tftp::proto::{Action, Event, Limits, Mode, Packet, ReadTransfer, TftpOption};
use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};

const NAMES: [&str; 6] = ["blksize", "windowsize", "timeout", "tsize", "BlkSize", "x"];

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let file_len = u.int_in_range(0..=300_000usize)?;
    let mode = *u.choose(&[Mode::Octet, Mode::Netascii, Mode::Mail])?;
    let mut owned = Vec::new();
    for _ in 0..u.int_in_range(0..=6)? {
        let name = *u.choose(&NAMES)?;
        let value = if u.arbitrary()? {
            u.int_in_range(0..=70_000u32)?.to_string()
        } else {
            u.arbitrary::<String>()?
        };
        owned.push((name, value));
    }
    let options: Vec<TftpOption<'_>> = owned
        .iter()
        .map(|(name, value)| TftpOption { name, value })
        .collect();
    let limits = Limits {
        max_blksize: u.int_in_range(8..=65464)?,
        max_windowsize: u.int_in_range(1..=64)?,
        default_timeout: Duration::from_millis(u.int_in_range(1..=2000)?),
        max_retries: u.int_in_range(0..=4)?,
    };
    let size = if u.arbitrary()? {
        Some(file_len as u64)
    } else {
        None
    };
    let mut now = Instant::now();
    let mut t = ReadTransfer::new(now, mode, &options, size, &limits);
    let blksize = usize::from(t.blksize());
    let mut next_read = 0u64;
    let mut last_data = 0u16;
    let mut ended = false;
    for _ in 0..20_000 {
        while let Some(action) = t.poll_action() {
            assert!(!ended, "action after the end: {action:?}");
            match action {
                Action::Send(pkt) => match Packet::decode(&pkt) {
                    Ok(Packet::Data { block, data }) => {
                        assert!(data.len() <= blksize);
                        last_data = block;
                    }
                    Ok(_) => {}
                    Err(e) => panic!("sent an undecodable packet: {e}"),
                },
                Action::Read { offset, len } => {
                    assert!(offset >= next_read, "read went backwards");
                    let start = (offset as usize).min(file_len);
                    let end = start.saturating_add(len).min(file_len);
                    next_read = end as u64;
                    let data: Vec<u8> = (start..end).map(|i| i as u8).collect();
                    t.handle(now, Event::Data(&data));
                }
                Action::SetTimer(at) => assert!(at >= now),
                Action::Finished | Action::Failed(_) => ended = true,
            }
        }
        if u.is_empty() {
            break;
        }
        let pkt;
        let event = match u.int_in_range(0..=5u8)? {
            0 => {
                now += Duration::from_millis(u.int_in_range(0..=3000)?);
                Event::Timeout
            }
            1 | 2 => {
                let delta: i16 = u.int_in_range(-40..=40)?;
                pkt = Packet::Ack {
                    block: last_data.wrapping_add_signed(delta),
                }
                .to_vec();
                Event::Packet(&pkt)
            }
            3 => {
                pkt = Packet::Ack {
                    block: u.arbitrary()?,
                }
                .to_vec();
                Event::Packet(&pkt)
            }
            4 => {
                pkt = u.arbitrary::<Vec<u8>>()?;
                Event::Packet(&pkt)
            }
            _ => Event::ReadFailed,
        };
        t.handle(now, event);
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
