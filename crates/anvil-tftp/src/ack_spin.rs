//! Whether a transfer should poll its socket for the client's ACK instead
//! of going to sleep: the decisions only, without clock or socket (the
//! driver in `server.rs` times the polls and reports what they found).
//!
//! Why poll at all: once a window is sent, the service thread has nothing
//! to do but wait for its ACK. Sleeping in epoll means that every window
//! also pays for waking the thread up again — on an idle virtual CPU tens
//! of microseconds, as much as a 16-block window takes to send — and a
//! lock-step transfer pays it for every block. Polling the socket without
//! blocking for a short budget takes that wake-up off the path whenever
//! the ACK comes back quickly: a client on a fast LAN or on the same host.
//!
//! Why it costs nothing where it does not pay:
//! - A transfer whose ACKs do not come back within the budget (a firmware
//!   PXE client on a real LAN takes far longer than the budget to answer a
//!   window) stops polling after [`GIVE_UP_AFTER`] misses in a row, and
//!   afterwards tries once every [`PROBE_EVERY`] windows, in case the
//!   misses were a passing hiccup. At most one budget per window is ever
//!   spent, and after giving up one budget per [`PROBE_EVERY`] windows.
//! - The service thread serves every transfer: while it polls for one, the
//!   others wait (a budget at most). So it polls only while fewer transfers
//!   are active than there are CPUs — with more, the thread has other work
//!   and rarely sleeps anyway — and never on a single CPU, where polling
//!   would take the CPU from everything else, a local client included.

/// Misses in a row after which a transfer stops polling.
pub(crate) const GIVE_UP_AFTER: u32 = 3;

/// Windows between two probes once a transfer gave up polling.
pub(crate) const PROBE_EVERY: u32 = 64;

/// Per-transfer polling decisions.
#[derive(Debug, Default)]
pub(crate) struct AckSpin {
    /// Polls in a row that ended without a datagram.
    misses: u32,
    /// Windows waited for without polling since the last probe.
    skipped: u32,
}

impl AckSpin {
    /// Whether to poll before sleeping, with `active` transfers running
    /// (this one included) on a machine with `cpus` CPUs available.
    pub(crate) fn should_poll(&mut self, active: usize, cpus: usize) -> bool {
        if cpus < 2 || active >= cpus {
            return false;
        }
        if self.misses < GIVE_UP_AFTER {
            return true;
        }
        self.skipped += 1;
        if self.skipped >= PROBE_EVERY {
            self.skipped = 0;
            return true;
        }
        false
    }

    /// What the poll found: a datagram (`true`) or nothing within the
    /// budget (`false`).
    pub(crate) fn record(&mut self, answered: bool) {
        if answered {
            self.misses = 0;
            self.skipped = 0;
        } else {
            self.misses = self.misses.saturating_add(1);
        }
    }

    /// Whether this transfer has stopped polling (between probes).
    #[cfg(test)]
    fn gave_up(&self) -> bool {
        self.misses >= GIVE_UP_AFTER
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_while_acks_come_back_within_the_budget() {
        let mut spin = AckSpin::default();
        for _ in 0..1000 {
            assert!(spin.should_poll(1, 2));
            spin.record(true);
        }
        assert!(!spin.gave_up());
    }

    #[test]
    fn a_miss_or_two_between_hits_does_not_stop_polling() {
        let mut spin = AckSpin::default();
        for answered in [false, false, true, false, false, true] {
            assert!(spin.should_poll(1, 4));
            spin.record(answered);
        }
        assert!(!spin.gave_up());
    }

    #[test]
    fn gives_up_after_misses_in_a_row_and_probes_now_and_then() {
        let mut spin = AckSpin::default();
        for _ in 0..GIVE_UP_AFTER {
            assert!(spin.should_poll(1, 2));
            spin.record(false);
        }
        assert!(spin.gave_up());
        // A slow client: of 10 probe periods, one poll each.
        let polls = (0..PROBE_EVERY * 10)
            .filter(|_| {
                let poll = spin.should_poll(1, 2);
                if poll {
                    spin.record(false);
                }
                poll
            })
            .count();
        assert_eq!(polls, 10);
        // The client got fast again: the next probe hits and polling resumes.
        while !spin.should_poll(1, 2) {}
        spin.record(true);
        assert!(!spin.gave_up());
        assert!(spin.should_poll(1, 2));
    }

    #[test]
    fn never_polls_on_one_cpu_or_with_as_many_transfers_as_cpus() {
        let mut spin = AckSpin::default();
        assert!(!spin.should_poll(1, 1));
        assert!(!spin.should_poll(2, 2));
        assert!(!spin.should_poll(9, 8));
        assert!(spin.should_poll(7, 8));
    }
}
