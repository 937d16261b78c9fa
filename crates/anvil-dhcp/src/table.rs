//! The in-memory lease table: the service's authoritative view, written
//! behind to the [`crate::LeaseStore`].

use crate::seams::{Lease, LeaseState};
use anvil_types::MacAddr;
use std::collections::HashMap;
use std::net::Ipv4Addr;

/// Leases by address, plus each client's current address per network.
/// Subnets never overlap (checked at config load), so an address alone
/// identifies its network.
#[derive(Debug, Default)]
pub(crate) struct LeaseTable {
    by_ip: HashMap<Ipv4Addr, (usize, Lease)>,
    by_mac: HashMap<(usize, MacAddr), Ipv4Addr>,
}

impl LeaseTable {
    pub fn get(&self, ip: Ipv4Addr) -> Option<&Lease> {
        self.by_ip.get(&ip).map(|(_, l)| l)
    }

    pub fn get_mut(&mut self, ip: Ipv4Addr) -> Option<&mut Lease> {
        self.by_ip.get_mut(&ip).map(|(_, l)| l)
    }

    /// The address a client last had (or was offered) on a network.
    pub fn ip_of(&self, net: usize, mac: MacAddr) -> Option<Ipv4Addr> {
        self.by_mac.get(&(net, mac)).copied()
    }

    /// Stores a record, replacing whatever that address had, and makes it the
    /// client's current address on the network.
    pub fn insert(&mut self, net: usize, lease: Lease) {
        let ip = lease.ip;
        let mac = lease.mac;
        if let Some((onet, old)) = self.by_ip.insert(ip, (net, lease))
            && old.mac != mac
            && self.by_mac.get(&(onet, old.mac)) == Some(&ip)
        {
            self.by_mac.remove(&(onet, old.mac));
        }
        self.by_mac.insert((net, mac), ip);
    }

    /// Forgets that a client is associated with this address (the record
    /// itself stays).
    pub fn unlink(&mut self, net: usize, mac: MacAddr, ip: Ipv4Addr) {
        if self.by_mac.get(&(net, mac)) == Some(&ip) {
            self.by_mac.remove(&(net, mac));
        }
    }

    pub fn remove(&mut self, ip: Ipv4Addr) -> Option<Lease> {
        let (net, l) = self.by_ip.remove(&ip)?;
        self.unlink(net, l.mac, ip);
        Some(l)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Lease> {
        self.by_ip.values().map(|(_, l)| l)
    }

    pub fn ips(&self) -> Vec<Ipv4Addr> {
        self.by_ip.keys().copied().collect()
    }

    pub fn counts(&self) -> [(LeaseState, usize); 5] {
        let mut out = LeaseState::ALL.map(|s| (s, 0));
        for (_, l) in self.by_ip.values() {
            if let Some(e) = out.iter_mut().find(|(s, _)| *s == l.state) {
                e.1 += 1;
            }
        }
        out
    }
}
