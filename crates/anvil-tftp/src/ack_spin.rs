//! Whether a transfer should poll its socket for the client's ACK instead
//! of going to sleep, and for how long: the decisions only, without clock or
//! socket (the driver in `server.rs` times the replies and the polls).
//!
//! Why poll at all: once a window is sent, the service thread has nothing
//! to do but wait for its ACK. Sleeping in epoll means that every window
//! also pays for waking the thread up again — on an idle virtual CPU tens
//! of microseconds, as much as a 16-block window takes to send — and a
//! lock-step transfer pays it for every block. Polling the socket without
//! blocking for a short budget takes that wake-up off the path whenever
//! the ACK comes back quickly: a client on a fast LAN or on the same host.
//!
//! Why it costs little where it does not pay:
//! - Each transfer learns how long its client takes to answer (a moving
//!   average of the time from the end of a send to the reply, measured
//!   whether the reply was polled for or slept for) and polls only while
//!   that is at most [`MAX_BUDGET_US`], for 1.5 times that long. A firmware
//!   PXE client on a real LAN, which takes far longer to answer a window,
//!   is polled for at most once or twice at the start of its transfer; if a
//!   client becomes fast again, the average shows it and polling resumes.
//! - The service thread serves every transfer: while it polls for one, the
//!   others wait (a budget at most). So it polls only while fewer transfers
//!   are active than there are CPUs — with more, the thread has other work
//!   and rarely sleeps anyway — and never on a single CPU, where polling
//!   would take the CPU from everything else, a local client included.
//!
//! Between two polls the thread yields its CPU, in case the client waits to
//! run there — except for a client that answers within [`SPIN_ONLY_US`] on
//! average: that one is running on another CPU already (a client woken on
//! this CPU would first have to wait for a yield), and a yield, a trip
//! through the scheduler, would only delay noticing its reply. Should such a
//! client come to need this CPU after all, its replies slow down to the
//! poll budget, the average rises past the threshold and yielding resumes.

use std::time::Duration;

/// Longest poll, in µs: replies slower than this on average are slept for.
pub(crate) const MAX_BUDGET_US: u64 = 100;

/// Shortest poll, in µs (a fast reply that came a little late still hits).
pub(crate) const MIN_BUDGET_US: u64 = 20;

/// Clients answering faster than this on average, in µs, are polled for
/// without yielding the CPU between polls.
pub(crate) const SPIN_ONLY_US: u64 = 10;

/// Weight of a new reply time in the average: 1/8.
const SMOOTHING_SHIFT: u32 = 3;

/// Per-transfer polling decisions.
#[derive(Debug)]
pub(crate) struct AckSpin {
    /// Moving average of the client's reply time, in ns (in µs, the
    /// integer average would stick several µs above replies of a few µs).
    reply_ns: u64,
}

impl Default for AckSpin {
    /// Starts out assuming a fast client: the first replies show otherwise.
    fn default() -> Self {
        AckSpin {
            reply_ns: MIN_BUDGET_US * 1000,
        }
    }
}

impl AckSpin {
    /// How long to poll before sleeping, if at all, with `active` transfers
    /// running (this one included) on a machine with `cpus` CPUs available.
    pub(crate) fn budget(&self, active: usize, cpus: usize) -> Option<Duration> {
        let reply_us = self.reply_ns / 1000;
        if cpus < 2 || active >= cpus || reply_us > MAX_BUDGET_US {
            return None;
        }
        let us = (reply_us + reply_us / 2).clamp(MIN_BUDGET_US, MAX_BUDGET_US);
        Some(Duration::from_micros(us))
    }

    /// Whether to poll without yielding the CPU between polls (see the
    /// module documentation).
    pub(crate) fn spin_only(&self) -> bool {
        self.reply_ns <= SPIN_ONLY_US * 1000
    }

    /// The client answered `after` the end of the send it answers.
    pub(crate) fn record_reply(&mut self, after: Duration) {
        let ns = u64::try_from(after.as_nanos()).unwrap_or(u64::MAX);
        // Capped so that one very late reply cannot keep polling off for
        // long once the client is fast again.
        let ns = ns.min(4 * MAX_BUDGET_US * 1000);
        self.reply_ns =
            self.reply_ns - (self.reply_ns >> SMOOTHING_SHIFT) + (ns >> SMOOTHING_SHIFT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn polls_a_fast_client_a_little_longer_than_it_takes() {
        let mut spin = AckSpin::default();
        for _ in 0..100 {
            spin.record_reply(us(40));
        }
        let budget = spin.budget(1, 2).expect("polls");
        assert!((us(55)..=us(62)).contains(&budget), "{budget:?}");
        for _ in 0..100 {
            spin.record_reply(us(2));
        }
        assert_eq!(spin.budget(1, 2), Some(us(MIN_BUDGET_US)));
    }

    #[test]
    fn a_slow_client_is_polled_for_at_most_twice() {
        let mut spin = AckSpin::default();
        let mut polls = 0;
        for _ in 0..1000 {
            if spin.budget(1, 2).is_some() {
                polls += 1;
            }
            spin.record_reply(Duration::from_millis(2));
        }
        assert!(polls <= 2, "{polls} polls");
    }

    #[test]
    fn polling_resumes_when_the_client_gets_fast_again() {
        let mut spin = AckSpin::default();
        for _ in 0..50 {
            spin.record_reply(Duration::from_secs(1));
        }
        assert_eq!(spin.budget(1, 2), None);
        let windows = (1..100)
            .find(|_| {
                spin.record_reply(us(10));
                spin.budget(1, 2).is_some()
            })
            .expect("polls again");
        assert!(windows <= 30, "after {windows} fast replies");
    }

    #[test]
    fn one_late_reply_does_not_stop_polling() {
        let mut spin = AckSpin::default();
        for _ in 0..100 {
            spin.record_reply(us(15));
        }
        spin.record_reply(Duration::from_millis(5));
        assert!(spin.budget(1, 2).is_some());
    }

    #[test]
    fn spins_without_yielding_only_for_a_client_answering_within_microseconds() {
        let mut spin = AckSpin::default();
        assert!(!spin.spin_only(), "an unknown client gets yields");
        for _ in 0..100 {
            spin.record_reply(Duration::from_nanos(3_500));
        }
        assert!(spin.spin_only());
        // A client that came to need this CPU answers no sooner than the
        // budget: yielding resumes within a few windows.
        let windows = (1..100)
            .find(|_| {
                spin.record_reply(us(MIN_BUDGET_US));
                !spin.spin_only()
            })
            .expect("yields again");
        assert!(windows <= 8, "after {windows} slow replies");
        assert!(spin.budget(1, 2).is_some(), "still polls, with yields");
    }

    #[test]
    fn never_polls_on_one_cpu_or_with_as_many_transfers_as_cpus() {
        let spin = AckSpin::default();
        assert_eq!(spin.budget(1, 1), None);
        assert_eq!(spin.budget(2, 2), None);
        assert_eq!(spin.budget(9, 8), None);
        assert!(spin.budget(7, 8).is_some());
    }
}
