//! What a deployment's cloud-init data is rendered from, and its validation.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::Error;
use crate::network::NetworkConfig;

/// SSH key types OpenSSH's `authorized_keys` accepts (`ssh -Q key`), plus the
/// certificate forms. A key outside this list would be ignored by sshd and the
/// operator would find out only when the login fails.
const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-dss",
    "ssh-ed25519-cert-v01@openssh.com",
    "ssh-rsa-cert-v01@openssh.com",
    "ecdsa-sha2-nistp256-cert-v01@openssh.com",
    "ecdsa-sha2-nistp384-cert-v01@openssh.com",
    "ecdsa-sha2-nistp521-cert-v01@openssh.com",
];

/// Everything one deployment's cloud-init data is rendered from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployContext {
    /// cloud-init's `instance-id` (and the config-drive `uuid`): the machine
    /// id. cloud-init runs its per-instance modules (keys, hostname, user-data)
    /// again when it changes; a deploy writes a fresh disk, so the machine id
    /// is stable enough. Use [`DeployContext::with_deployment`] to make every
    /// deployment a new instance.
    pub instance_id: String,
    /// Short host name, one DNS label.
    pub hostname: String,
    /// DNS domain; with it, `local-hostname` is the FQDN.
    pub domain: Option<String>,
    /// Validated `authorized_keys` lines (type, base64 blob, optional comment).
    pub ssh_keys: Vec<String>,
    /// The operator's user-data, byte for byte; never parsed for rendering.
    pub user_data: Option<Vec<u8>>,
    pub network: NetworkConfig,
}

impl DeployContext {
    /// Validates the identity parts; the network is validated when rendered
    /// (and by [`NetworkConfig::validate`]).
    pub fn new(
        machine_id: &str,
        hostname: &str,
        domain: Option<&str>,
        ssh_keys: &[String],
        user_data: Option<Vec<u8>>,
        network: NetworkConfig,
    ) -> Result<Self, Error> {
        let instance_id = validate_instance_id(machine_id)?;
        let (hostname, domain) = split_hostname(hostname, domain)?;
        let ssh_keys = ssh_keys
            .iter()
            .enumerate()
            .map(|(index, key)| validate_ssh_key(index, key))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            instance_id,
            hostname,
            domain,
            ssh_keys,
            user_data,
            network,
        })
    }

    /// Makes the instance id `<machine>-<deployment>` so that cloud-init treats
    /// a redeploy of the same machine as a new instance even if its state
    /// directory somehow survived.
    pub fn with_deployment(mut self, deployment: &str) -> Result<Self, Error> {
        self.instance_id = validate_instance_id(&format!("{}-{deployment}", self.instance_id))?;
        Ok(self)
    }

    /// `hostname.domain`, or the short name without a domain.
    pub fn fqdn(&self) -> String {
        match &self.domain {
            Some(domain) => format!("{}.{domain}", self.hostname),
            None => self.hostname.clone(),
        }
    }
}

fn validate_instance_id(value: &str) -> Result<String, Error> {
    let err = |reason| Error::InstanceId {
        value: value.to_string(),
        reason,
    };
    if value.is_empty() || value.len() > 128 {
        return Err(err("must be 1 to 128 characters"));
    }
    // It lands in a path below /var/lib/cloud/instances/.
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        || value.starts_with('.')
    {
        return Err(err("only letters, digits, '-', '_' and '.' (not first)"));
    }
    Ok(value.to_string())
}

fn validate_label(label: &str) -> Result<(), &'static str> {
    if label.is_empty() || label.len() > 63 {
        return Err("each label must be 1 to 63 characters");
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err("only letters, digits and '-'");
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err("a label must not start or end with '-'");
    }
    Ok(())
}

/// Validates a DNS domain (also used for DNS search domains).
pub(crate) fn validate_domain(value: &str) -> Result<String, Error> {
    let d = value.trim_end_matches('.').to_ascii_lowercase();
    let err = |reason| Error::Domain {
        value: value.to_string(),
        reason,
    };
    if d.is_empty() || d.len() > 253 {
        return Err(err("must be 1 to 253 characters"));
    }
    for label in d.split('.') {
        validate_label(label).map_err(err)?;
    }
    Ok(d)
}

/// Splits `host` or `host.domain` (the domain argument wins over a dotted
/// name's tail only if both agree; otherwise the name is rejected, because
/// the host would end up with a name nobody asked for).
fn split_hostname(name: &str, domain: Option<&str>) -> Result<(String, Option<String>), Error> {
    let lower = name.trim_end_matches('.').to_ascii_lowercase();
    let err = |reason| Error::Hostname {
        value: name.to_string(),
        reason,
    };
    let (host, tail) = match lower.split_once('.') {
        Some((h, t)) => (h.to_string(), Some(t.to_string())),
        None => (lower.clone(), None),
    };
    validate_label(&host).map_err(err)?;
    if host.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err("must not be all digits"));
    }
    let domain = match (tail, domain) {
        (None, None) => None,
        (Some(t), None) => Some(validate_domain(&t)?),
        (None, Some(d)) => Some(validate_domain(d)?),
        (Some(t), Some(d)) => {
            let (t, d) = (validate_domain(&t)?, validate_domain(d)?);
            if t != d {
                return Err(err("its domain differs from the given domain"));
            }
            Some(d)
        }
    };
    if let Some(d) = &domain
        && host.len() + 1 + d.len() > 253
    {
        return Err(err("the FQDN is longer than 253 characters"));
    }
    Ok((host, domain))
}

/// Checks one `authorized_keys` line: a known type, a base64 blob that decodes
/// and starts with that same type (the SSH wire format repeats it), an
/// optional single-line comment. Options before the type
/// (`from="…" ssh-ed25519 …`) are refused: keys given for a deploy are plain.
pub fn validate_ssh_key(index: usize, line: &str) -> Result<String, Error> {
    let err = |reason: String| Error::SshKey { index, reason };
    let line = line.trim();
    if line.contains(['\n', '\r']) {
        return Err(err("more than one line".into()));
    }
    let mut parts = line.splitn(3, [' ', '\t']);
    let key_type = parts.next().unwrap_or_default();
    let blob = parts.next().unwrap_or_default().trim();
    let comment = parts.next().map(str::trim).unwrap_or_default();
    if !SSH_KEY_TYPES.contains(&key_type) {
        return Err(err(format!(
            "unknown key type {:?} (expected e.g. ssh-ed25519, ssh-rsa, ecdsa-sha2-nistp256)",
            key_type.chars().take(40).collect::<String>()
        )));
    }
    let decoded = STANDARD
        .decode(blob)
        .map_err(|e| err(format!("key data is not base64: {e}")))?;
    // The blob starts with uint32 length + the type name.
    let wire_type = decoded
        .get(..4)
        .map(|n| u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize)
        .and_then(|len| decoded.get(4..4 + len));
    // ... followed by the key material, also length-prefixed, ending exactly
    // at the end of the blob: a truncated paste fails here.
    if wire_type != Some(key_type.as_bytes()) || !wire_strings_complete(&decoded) {
        return Err(err(format!(
            "key data does not hold a {key_type} key (truncated or pasted wrong?)"
        )));
    }
    Ok(if comment.is_empty() {
        format!("{key_type} {blob}")
    } else {
        format!("{key_type} {blob} {comment}")
    })
}

/// The SSH wire format: a sequence of uint32-length-prefixed strings. True
/// when there are at least two (type + key material) and they fill `blob`.
fn wire_strings_complete(blob: &[u8]) -> bool {
    let mut rest = blob;
    let mut count = 0;
    while !rest.is_empty() {
        let Some(len) = rest
            .get(..4)
            .map(|n| u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize)
        else {
            return false;
        };
        let Some(tail) = rest.get(4..).and_then(|r| r.get(len..)) else {
            return false;
        };
        rest = tail;
        count += 1;
    }
    count >= 2
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A real ed25519 public key (generated with ssh-keygen for these tests).
    pub const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDnOU2zyIAnBcHkWVLvAxoUXE2FYKBuheYt6B6p3BVHR ops@example";
    pub const RSA: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC1ZcSEAUGzi/IsLJUb8hWU678xI64IPwJn/lXwfUTzuOutTmcDJVAV2s/VJSwEIp2k81lgkVWaUn7n5YRH8d6eRUe88N9uDOpD8wVEyOhvrO/TATHO4Hq+abszsDlTgxTSjEUlVvGyR170sig32pAxxtMIRnUg1b/2k2POajuwPQ== r";
    pub const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBOaU/WCmn9JdWSWKyqTPg87IrBz81XcUKD8A4I+EYQ3Nm97Iob1zPoXRKnUmLIt1h2gzfX+4uG4DfDgrDSyebXs= e";

    #[test]
    fn ssh_key_accepted_and_normalised() {
        let k = validate_ssh_key(0, &format!("  {ED25519}  ")).unwrap();
        assert_eq!(k, ED25519);
        let no_comment = ED25519.rsplit_once(' ').unwrap().0;
        assert_eq!(validate_ssh_key(0, no_comment).unwrap(), no_comment);
        assert_eq!(validate_ssh_key(1, ECDSA).unwrap(), ECDSA);
        assert_eq!(validate_ssh_key(2, RSA).unwrap(), RSA);
    }

    #[test]
    fn ssh_key_rules() {
        let rsa_as_ed25519 = RSA.replacen("ssh-rsa", "ssh-ed25519", 1);
        // drop 8 base64 characters (6 bytes) of key material
        let blob = ED25519.split(' ').nth(1).unwrap();
        let truncated = format!("ssh-ed25519 {}", &blob[..blob.len() - 8]);
        let cases: [(&str, &str); 8] = [
            ("", "unknown key type"),
            ("ssh-foo AAAA", "unknown key type"),
            ("ssh-ed25519 not*base64", "not base64"),
            // base64 of an RSA header under an ed25519 label
            (&rsa_as_ed25519, "does not hold"),
            ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5", "does not hold"),
            (&truncated, "does not hold"),
            ("ssh-ed25519 AAAA\nssh-rsa AAAA", "more than one line"),
            ("from=\"10.0.0.0/8\" ssh-ed25519 AAAA", "unknown key type"),
        ];
        for (line, want) in cases {
            let e = validate_ssh_key(3, line).unwrap_err();
            let text = e.to_string();
            assert!(text.contains(want), "{line:?}: {text}");
            assert!(text.starts_with("SSH public key #3"), "{text}");
        }
    }

    #[test]
    fn hostname_rules() {
        assert_eq!(
            split_hostname("Web-1", None).unwrap(),
            ("web-1".into(), None)
        );
        assert_eq!(
            split_hostname("web-1.Example.org.", None).unwrap(),
            ("web-1".into(), Some("example.org".into()))
        );
        assert_eq!(
            split_hostname("web-1", Some("example.org")).unwrap(),
            ("web-1".into(), Some("example.org".into()))
        );
        assert!(split_hostname("web-1.example.org", Some("example.org")).is_ok());
        for bad in [
            "",
            "-web",
            "web-",
            "we_b",
            "1234",
            &"a".repeat(64),
            "web..x",
        ] {
            assert!(split_hostname(bad, None).is_err(), "{bad:?}");
        }
        assert!(matches!(
            split_hostname("web-1.a.org", Some("b.org")),
            Err(Error::Hostname { .. })
        ));
        assert!(matches!(
            split_hostname("web", Some("bad_domain")),
            Err(Error::Domain { .. })
        ));
    }

    #[test]
    fn instance_id_rules() {
        assert!(validate_instance_id("0193a4b2-7c1d-7e00-8000-0123456789ab").is_ok());
        for bad in ["", "../etc", "a/b", ".hidden", "a b", &"x".repeat(129)] {
            assert!(validate_instance_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn context_fqdn_and_deployment() {
        let ctx = DeployContext::new(
            "m1",
            "node7",
            Some("lab.example"),
            &[ED25519.to_string()],
            None,
            NetworkConfig::default(),
        )
        .unwrap();
        assert_eq!(ctx.fqdn(), "node7.lab.example");
        assert_eq!(ctx.with_deployment("3").unwrap().instance_id, "m1-3");
    }
}
