//! A display copy of user-data with secrets replaced by `********`, for
//! `GET /api/v1/machines/{id}/cloud-init` and the web UI. The copy written to
//! the disk is never masked; this works line by line on text and never
//! changes what it does not recognise as a secret.

pub const MASK: &str = "********";

/// Key names (lower-cased substrings) whose values are secrets: `password`,
/// `passwd` (also `hashed_passwd`, `chpasswd`), `secret`, `token`, private
/// SSH host keys (`rsa_private`), API keys, credentials.
const SENSITIVE: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "private",
    "api_key",
    "apikey",
    "credential",
];

fn is_sensitive(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    SENSITIVE.iter().any(|s| k.contains(s))
}

/// Masks user-data for display. Binary user-data (gzip, …) is not shown at all.
pub fn mask_user_data(data: &[u8]) -> String {
    let Ok(text) = std::str::from_utf8(data) else {
        return format!("# {} bytes of binary user-data, not shown\n", data.len());
    };
    let mut out = String::with_capacity(text.len());
    // Indentation of a sensitive key whose value continues on the next lines.
    let mut block: Option<usize> = None;
    let mut mime = MimeState::Text;
    for line in text.split_inclusive('\n') {
        let (body, eol) = match line.strip_suffix('\n') {
            Some(b) => match b.strip_suffix('\r') {
                Some(b2) => (b2, "\r\n"),
                None => (b, "\n"),
            },
            None => (line, ""),
        };
        let indent = body.len() - body.trim_start().len();
        let trimmed = body.trim_start();

        mime = mime.next(body);
        if mime == MimeState::Base64Body {
            out.push_str(&" ".repeat(indent));
            out.push_str(MASK);
            out.push_str(eol);
            continue;
        }
        if let Some(block_indent) = block {
            if trimmed.is_empty() || indent > block_indent {
                out.push_str(&mask_nested(body, indent));
                out.push_str(eol);
                continue;
            }
            block = None;
        }
        let (masked, opens_block) = mask_line(body);
        if opens_block {
            block = Some(indent);
        }
        out.push_str(&masked);
        out.push_str(eol);
    }
    out
}

/// Within a multipart message, base64 parts are opaque and masked whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MimeState {
    Text,
    /// Saw `Content-Transfer-Encoding: base64`, headers continue.
    Base64Headers,
    Base64Body,
}

impl MimeState {
    fn next(self, line: &str) -> MimeState {
        let lower = line.trim().to_ascii_lowercase();
        match self {
            _ if lower.starts_with("--") && !lower.contains(' ') && lower.len() > 2 => {
                MimeState::Text
            }
            MimeState::Text
                if lower.starts_with("content-transfer-encoding:") && lower.ends_with("base64") =>
            {
                MimeState::Base64Headers
            }
            MimeState::Base64Headers if lower.is_empty() => MimeState::Base64Body,
            s => s,
        }
    }
}

/// A line under a sensitive key: keep nested keys, mask values.
fn mask_nested(body: &str, indent: usize) -> String {
    let trimmed = body.trim_start();
    if trimmed.is_empty() {
        return body.to_string();
    }
    let pad = &body[..indent];
    let (item, rest) = match trimmed.strip_prefix("- ") {
        Some(r) => ("- ", r.trim_start()),
        None => ("", trimmed),
    };
    if let Some((key, value)) = split_pair(rest, ':') {
        if value.is_empty() || is_block_indicator(value) {
            return body.to_string();
        }
        return format!("{pad}{item}{key}: {}", quoted_mask(value));
    }
    // chpasswd's `name:password` lines (no space after the colon).
    if let Some((name, _)) = rest.split_once(':')
        && !name.is_empty()
        && !name.contains(char::is_whitespace)
    {
        return format!("{pad}{item}{name}:{MASK}");
    }
    format!("{pad}{item}{MASK}")
}

/// Masks one top-level line; says whether its value continues below.
fn mask_line(body: &str) -> (String, bool) {
    let indent = body.len() - body.trim_start().len();
    let pad = &body[..indent];
    let trimmed = &body[indent..];
    if trimmed.starts_with('#') {
        return (body.to_string(), false);
    }
    let (item, rest) = match trimmed.strip_prefix("- ") {
        Some(r) => ("- ", r.trim_start()),
        None => ("", trimmed),
    };
    // YAML / JSON `key: value`.
    if let Some((key, value)) = split_pair(rest, ':')
        && is_sensitive(key.trim_matches(['"', '\'']))
    {
        if value.is_empty() || is_block_indicator(value) {
            return (body.to_string(), true);
        }
        return (format!("{pad}{item}{key}: {}", quoted_mask(value)), false);
    }
    // Shell `NAME=value` / `export NAME=value`, and `--password=x`/`--password x`.
    let words: Vec<&str> = trimmed.split(' ').collect();
    let mut changed = false;
    let mut masked_words = Vec::with_capacity(words.len());
    let mut mask_next = false;
    for w in words {
        if mask_next && !w.is_empty() {
            masked_words.push(MASK.to_string());
            mask_next = false;
            changed = true;
            continue;
        }
        if let Some((k, v)) = w.split_once('=')
            && is_sensitive(k)
            && !v.is_empty()
        {
            masked_words.push(format!("{k}={}", quoted_mask(v)));
            changed = true;
            continue;
        }
        if w.starts_with('-') && is_sensitive(w) {
            mask_next = true;
        }
        masked_words.push(w.to_string());
    }
    if changed {
        return (format!("{pad}{}", masked_words.join(" ")), false);
    }
    // Flow mappings: `- {name: ops, password: x}`.
    if trimmed.contains('{')
        && let Some(masked) = mask_flow_pairs(trimmed)
    {
        return (format!("{pad}{masked}"), false);
    }
    // `echo 'root:pw' | chpasswd` and similar.
    if trimmed.contains("chpasswd") || trimmed.contains("passwd --stdin") {
        return (format!("{pad}{MASK} (a command setting a password)"), false);
    }
    (body.to_string(), false)
}

/// Masks `key: value` pairs with a sensitive key inside `{…}` on one line.
fn mask_flow_pairs(line: &str) -> Option<String> {
    let mut out = String::with_capacity(line.len());
    let mut changed = false;
    let mut rest = line;
    while let Some(colon) = rest.find(": ") {
        let before = &rest[..colon];
        let key_start = before.rfind(['{', ',', ' ']).map_or(0, |i| i + 1);
        let key = before[key_start..].trim_matches(['"', '\'']);
        out.push_str(&rest[..colon + 2]);
        rest = &rest[colon + 2..];
        if is_sensitive(key) {
            let end = rest.find([',', '}']).unwrap_or(rest.len());
            out.push_str(&quoted_mask(rest[..end].trim()));
            rest = &rest[end..];
            changed = true;
        }
    }
    out.push_str(rest);
    changed.then_some(out)
}

/// `key: value` where key is a plain or quoted YAML/JSON key.
fn split_pair(s: &str, sep: char) -> Option<(&str, &str)> {
    let (key, value) = if let Some(q) = s.chars().next().filter(|c| *c == '"' || *c == '\'') {
        let end = s[1..].find(q)? + 2;
        let (k, rest) = s.split_at(end);
        let rest = rest.trim_start().strip_prefix(sep)?;
        (k, rest)
    } else {
        let idx = s.find(sep)?;
        let (k, rest) = s.split_at(idx);
        let rest = &rest[1..];
        if !(rest.is_empty() || rest.starts_with(' ') || rest.starts_with('\t')) {
            return None;
        }
        if k.is_empty() || k.contains(char::is_whitespace) {
            return None;
        }
        (k, rest)
    };
    Some((key, value.trim()))
}

fn is_block_indicator(value: &str) -> bool {
    let v = value.split(" #").next().unwrap_or(value).trim();
    matches!(v.chars().next(), Some('|' | '>'))
        && v[1..]
            .chars()
            .all(|c| matches!(c, '-' | '+') || c.is_ascii_digit())
}

/// Keeps quoting and a trailing comma (JSON) so the masked text still reads
/// as the same kind of document.
fn quoted_mask(value: &str) -> String {
    let (core, comma) = match value.strip_suffix(',') {
        Some(c) => (c.trim_end(), ","),
        None => (value, ""),
    };
    match core.chars().next() {
        Some(q @ ('"' | '\'')) => format!("{q}{MASK}{q}{comma}"),
        _ => format!("{MASK}{comma}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> String {
        mask_user_data(s.as_bytes())
    }

    #[test]
    fn plain_keys_masked_others_kept() {
        let input = "#cloud-config\nhostname: web\npassword: hunter2\nssh_pwauth: true\n";
        assert_eq!(
            m(input),
            "#cloud-config\nhostname: web\npassword: ********\nssh_pwauth: true\n"
        );
    }

    #[test]
    fn users_passwd_hash_and_list_items() {
        let input = "users:\n  - name: ops\n    passwd: $6$salt$hash\n    hashed_passwd: \"$6$x\"\n    lock_passwd: false\n    sudo: ALL=(ALL) NOPASSWD:ALL\n";
        let out = m(input);
        assert!(out.contains("    passwd: ********\n"), "{out}");
        assert!(out.contains("    hashed_passwd: \"********\"\n"), "{out}");
        // lock_passwd is a flag, but its name matches: masking it is harmless.
        assert!(!out.contains("$6$"), "{out}");
        assert!(out.contains("  - name: ops\n"), "{out}");
        assert!(out.contains("sudo: ALL=(ALL) NOPASSWD:ALL"), "{out}");
    }

    #[test]
    fn chpasswd_block_and_list() {
        let input = "chpasswd:\n  expire: false\n  list: |\n    root:s3cret\n    ops:RANDOM\n  users:\n    - {name: a, password: b}\n    - name: c\n      password: d\nruncmd:\n  - echo hi\n";
        let out = m(input);
        for secret in ["s3cret", "RANDOM", " d\n"] {
            assert!(!out.contains(secret), "{secret}: {out}");
        }
        assert!(out.contains("    root:********\n"), "{out}");
        assert!(out.contains("  list: |\n"), "{out}");
        assert!(out.contains("runcmd:\n  - echo hi\n"), "{out}");
    }

    #[test]
    fn flow_mappings() {
        assert_eq!(
            m("users:\n- {name: ops, password: pw, shell: /bin/sh}\n"),
            "users:\n- {name: ops, password: ********, shell: /bin/sh}\n"
        );
    }

    #[test]
    fn private_host_keys_block_scalars() {
        let input = "ssh_keys:\n  rsa_private: |\n    -----BEGIN RSA PRIVATE KEY-----\n    MIIabc\n    -----END RSA PRIVATE KEY-----\n  rsa_public: ssh-rsa AAAA\n";
        let out = m(input);
        assert!(!out.contains("MIIabc"), "{out}");
        assert!(out.contains("rsa_public: ssh-rsa AAAA"), "{out}");
    }

    #[test]
    fn json_and_scripts() {
        let out = m("{\"api_token\": \"abc\",\n \"name\": \"x\"}\n");
        assert_eq!(out, "{\"api_token\": \"********\",\n \"name\": \"x\"}\n");
        let script = "#!/bin/sh\nexport DB_PASSWORD=abc\nmytool --token xyz --verbose\necho 'root:pw' | chpasswd\necho done\n";
        let out = m(script);
        assert_eq!(
            out,
            "#!/bin/sh\nexport DB_PASSWORD=********\nmytool --token ******** --verbose\n******** (a command setting a password)\necho done\n"
        );
    }

    #[test]
    fn multipart_base64_parts_hidden_text_parts_masked() {
        let input = "Content-Type: multipart/mixed; boundary=\"XX\"\nMIME-Version: 1.0\n\n--XX\nContent-Type: text/cloud-config\n\npassword: pw1\n--XX\nContent-Type: text/x-shellscript\nContent-Transfer-Encoding: base64\n\nZWNobyBzZWNyZXQ=\n--XX--\n";
        let out = m(input);
        assert!(
            !out.contains("pw1") && !out.contains("ZWNobyBzZWNyZXQ="),
            "{out}"
        );
        assert!(out.contains("--XX--"), "{out}");
        assert!(out.contains("Content-Transfer-Encoding: base64"), "{out}");
    }

    /// Any text, however odd, is masked without a panic, line count kept.
    #[test]
    fn arbitrary_text_never_panics() {
        const PIECES: &[&str] = &[
            "password",
            ": ",
            ":",
            "=",
            "|",
            ">-",
            "- ",
            "{",
            "}",
            ",",
            "\"",
            "'",
            " ",
            "  ",
            "\n",
            "\r\n",
            "chpasswd",
            "--token",
            "é",
            "日本",
            "#",
            "--XX",
            "Content-Transfer-Encoding: base64",
            "x",
            "\t",
            "🙂",
        ];
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut masked_some = 0;
        for _ in 0..20_000 {
            let mut text = String::new();
            for _ in 0..next() % 24 {
                text.push_str(PIECES[(next() % PIECES.len() as u64) as usize]);
            }
            let out = mask_user_data(text.as_bytes());
            assert_eq!(
                out.matches('\n').count(),
                text.matches('\n').count(),
                "{text:?}"
            );
            masked_some += usize::from(out.contains(MASK));
        }
        assert!(
            masked_some > 1000,
            "the inputs exercise masking ({masked_some})"
        );
    }

    #[test]
    fn binary_and_crlf() {
        assert_eq!(
            mask_user_data(&[0x1f, 0x8b, 0xff, 0]),
            "# 4 bytes of binary user-data, not shown\n"
        );
        assert_eq!(m("a: 1\r\ntoken: x\r\n"), "a: 1\r\ntoken: ********\r\n");
        assert_eq!(m("no newline at end"), "no newline at end");
        assert_eq!(m(""), "");
    }
}
