//! Validated identifiers that face users: MAC addresses and hostnames.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A value that failed validation, with the field it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field} {value:?}: {message}")]
pub struct ParseError {
    pub field: &'static str,
    pub value: String,
    pub message: &'static str,
}

impl ParseError {
    pub fn new(field: &'static str, value: &str, message: &'static str) -> Self {
        let mut value = value.to_string();
        if value.len() > 80 {
            let mut cut = 80;
            while !value.is_char_boundary(cut) {
                cut -= 1;
            }
            value.truncate(cut);
            value.push('…');
        }
        ParseError {
            field,
            value,
            message,
        }
    }
}

/// An Ethernet MAC address. Accepts `aa:bb:cc:dd:ee:ff`, `aa-bb-cc-dd-ee-ff`,
/// `aabb.ccdd.eeff` and `aabbccddeeff` in any case; always printed as lower-case
/// colon-separated, which is also how it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl FromStr for MacAddr {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let hex: String = match t.len() {
            17 => {
                let sep = t.as_bytes()[2];
                if sep != b':' && sep != b'-' {
                    return Err(ParseError::new("mac", s, "expected aa:bb:cc:dd:ee:ff"));
                }
                let parts: Vec<&str> = t.split(sep as char).collect();
                if parts.len() != 6 || parts.iter().any(|p| p.len() != 2) {
                    return Err(ParseError::new("mac", s, "expected aa:bb:cc:dd:ee:ff"));
                }
                parts.concat()
            }
            14 => {
                let parts: Vec<&str> = t.split('.').collect();
                if parts.len() != 3 || parts.iter().any(|p| p.len() != 4) {
                    return Err(ParseError::new("mac", s, "expected aabb.ccdd.eeff"));
                }
                parts.concat()
            }
            12 => t.to_string(),
            _ => return Err(ParseError::new("mac", s, "expected six octets")),
        };
        let mut out = [0u8; 6];
        for (i, o) in out.iter_mut().enumerate() {
            let pair = hex
                .get(i * 2..i * 2 + 2)
                .ok_or_else(|| ParseError::new("mac", s, "expected hexadecimal digits"))?;
            *o = u8::from_str_radix(pair, 16)
                .map_err(|_| ParseError::new("mac", s, "expected hexadecimal digits"))?;
        }
        if out == [0; 6] || out == [0xff; 6] {
            return Err(ParseError::new(
                "mac",
                s,
                "the all-zero and broadcast addresses are not interface addresses",
            ));
        }
        if out[0] & 1 == 1 {
            return Err(ParseError::new(
                "mac",
                s,
                "a multicast address is not an interface address",
            ));
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            o[0], o[1], o[2], o[3], o[4], o[5]
        )
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A DNS host name (RFC 1123): labels of letters, digits and hyphens, 1–63
/// characters each, no leading or trailing hyphen, at most 253 in all.
/// Stored lower-case, so `Node-1` and `node-1` are the same machine.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hostname(String);

impl Hostname {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Hostname {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().trim_end_matches('.');
        if t.is_empty() {
            return Err(ParseError::new("hostname", s, "must not be empty"));
        }
        if t.len() > 253 {
            return Err(ParseError::new("hostname", s, "longer than 253 characters"));
        }
        for label in t.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(ParseError::new(
                    "hostname",
                    s,
                    "each label must be 1 to 63 characters",
                ));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(ParseError::new(
                    "hostname",
                    s,
                    "only letters, digits, hyphens and dots are allowed",
                ));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(ParseError::new(
                    "hostname",
                    s,
                    "a label must not start or end with a hyphen",
                ));
            }
        }
        Ok(Hostname(t.to_ascii_lowercase()))
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_forms_normalise() {
        let want = "52:54:00:ab:cd:ef";
        for form in [
            "52:54:00:AB:CD:EF",
            "52-54-00-ab-cd-ef",
            "5254.00ab.cdef",
            "525400abcdef",
            " 52:54:00:ab:cd:ef ",
        ] {
            assert_eq!(form.parse::<MacAddr>().unwrap().to_string(), want, "{form}");
        }
    }

    #[test]
    fn bad_macs_are_refused_with_the_field() {
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:eg",
            "52:54:00:ab:cd:ef:00",
            "00:00:00:00:00:00",
            "ff:ff:ff:ff:ff:ff",
            "01:00:5e:00:00:01",
            "52:54:00-ab:cd:ef",
            "ééééééééééééé",
        ] {
            let e = bad.parse::<MacAddr>().unwrap_err();
            assert_eq!(e.field, "mac", "{bad}");
        }
    }

    #[test]
    fn hostnames() {
        assert_eq!(
            "Node-01.Rack1".parse::<Hostname>().unwrap().as_str(),
            "node-01.rack1"
        );
        for bad in ["", "-a", "a-", "a..b", "a_b", "a b", &"x".repeat(64), "ä"] {
            assert!(bad.parse::<Hostname>().is_err(), "{bad}");
        }
    }
}
