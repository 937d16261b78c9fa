//! Keeping secrets out of logs and errors.
//!
//! Everything this crate puts into a `PowerError` or a log line that came
//! from the outside (a BMC's error message, a transport error, an address)
//! goes through [`scrub`]: BMCs echo request URLs back, and sushy-tools even
//! answers redirects with the credentials inside the `Location` URL.

use std::fmt;

/// A password or session token. Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn new(value: String) -> Self {
        Secret(value)
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Removes the userinfo of every URL in `text` and every occurrence of the
/// given secrets, verbatim or percent-encoded (as they appear in a URL).
pub(crate) fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut out = strip_userinfo(text);
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(secret, "***");
        let encoded = percent_encode(secret);
        if encoded != *secret {
            out = out.replace(&encoded, "***");
            // Some encoders use lower-case hex digits.
            out = out.replace(&encoded.to_lowercase(), "***");
        }
    }
    out
}

/// Cuts `text` to at most `max` bytes on a character boundary, so that a
/// BMC answering with a whole HTML page does not flood an error.
pub(crate) fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// `scheme://user:pass@host/…` → `scheme://host/…`, for every URL in `text`.
fn strip_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        // The authority ends at the first character that cannot be part of
        // it; an '@' inside it separates the userinfo from the host.
        let end = tail
            .find(|c: char| {
                matches!(
                    c,
                    '/' | '?' | '#' | '"' | '\'' | '<' | '>' | '(' | ')' | '[' | ']'
                ) || c.is_whitespace()
            })
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => out.push_str(&authority[at + 1..]),
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_removed_from_every_url() {
        let s = "redirect to http://admin:s3cret@10.0.0.1:8000/redfish/v1 and https://u@h/x";
        assert_eq!(
            scrub(s, &[]),
            "redirect to http://10.0.0.1:8000/redfish/v1 and https://h/x"
        );
    }

    #[test]
    fn secrets_are_removed_verbatim_and_encoded() {
        let s = "bad password p@ss word! (p%40ss%20word%21, p%40ss%20word%21)";
        let out = scrub(s, &["p@ss word!"]);
        assert!(!out.contains("p@ss"), "{out}");
        assert!(!out.contains("%40ss"), "{out}");
        assert_eq!(scrub("nothing here", &[""]), "nothing here");
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("ééé".into(), 3), "é…");
        assert_eq!(truncate("abc".into(), 10), "abc");
    }

    #[test]
    fn secret_debug_is_hidden() {
        assert_eq!(format!("{:?}", Secret::new("x".into())), "***");
    }
}
