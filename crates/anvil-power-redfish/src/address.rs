//! Where the BMC is: `BmcCredentials::address` (+ `port`) → base URL.

use anvil_power::PowerError;
use std::net::Ipv6Addr;
use url::Url;

/// The BMC's base URL (`scheme://host:port/`, never with userinfo) and the
/// `host:port` form used in errors and logs.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub(crate) base: Url,
    pub(crate) display: String,
    /// The ComputerSystem the address names (`/redfish/v1/Systems/<id>`),
    /// for services with many systems behind one address (emulators,
    /// chassis managers).
    pub(crate) system: Option<String>,
}

/// `/redfish/v1/Systems/<id>` (one segment, a trailing `/` allowed).
fn system_path(path: &str) -> Option<String> {
    let id = path
        .strip_prefix("/redfish/v1/Systems/")?
        .trim_end_matches('/');
    let ok = !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
        && id != "."
        && id != "..";
    ok.then(|| format!("/redfish/v1/Systems/{id}"))
}

impl Endpoint {
    /// Accepts `host`, `host:port`, `[v6]:port`, a bare IPv6 address, or a URL
    /// with an explicit `http://` / `https://` scheme (emulators and tests).
    /// HTTPS is the default. `port` overrides any port in `address`. A URL
    /// may name one system, `https://host/redfish/v1/Systems/<id>`: the
    /// driver then manages that one instead of the first listed.
    pub(crate) fn parse(address: &str, port: Option<u16>) -> Result<Self, PowerError> {
        let address = address.trim();
        if address.is_empty() {
            return Err(PowerError::Config("the BMC address is empty".into()));
        }
        // Never echo an address that might carry credentials.
        if address.contains('@') {
            return Err(PowerError::Config(
                "the BMC address must not contain credentials; use the username and password"
                    .into(),
            ));
        }
        let mut url = if address.contains("://") {
            let url = Url::parse(address)
                .map_err(|e| PowerError::Config(format!("invalid BMC address {address:?}: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(PowerError::Config(format!(
                    "the BMC address {address:?} must use http:// or https://"
                )));
            }
            url
        } else if let Ok(v6) = address.parse::<Ipv6Addr>() {
            Url::parse(&format!("https://[{v6}]"))
                .map_err(|e| PowerError::Config(format!("invalid BMC address {address:?}: {e}")))?
        } else {
            Url::parse(&format!("https://{address}"))
                .map_err(|e| PowerError::Config(format!("invalid BMC address {address:?}: {e}")))?
        };
        let system = match url.path() {
            "" | "/" => None,
            p => Some(system_path(p).ok_or_else(|| {
                PowerError::Config(format!(
                    "the BMC address {address:?} may have no path but /redfish/v1/Systems/<id>: \
                     the Redfish service is always at /redfish/v1"
                ))
            })?),
        };
        if url.query().is_some() || url.fragment().is_some() {
            return Err(PowerError::Config(format!(
                "the BMC address {address:?} must not have a query or fragment"
            )));
        }
        if let Some(port) = port {
            url.set_port(Some(port)).map_err(|()| {
                PowerError::Config(format!("cannot set port {port} on {address:?}"))
            })?;
        }
        let host = url
            .host_str()
            .ok_or_else(|| PowerError::Config(format!("the BMC address {address:?} has no host")))?
            .to_string();
        let port = url.port_or_known_default().unwrap_or(443);
        url.set_path("/");
        let display = format!("{host}:{port}");
        Ok(Endpoint {
            base: url,
            display,
            system,
        })
    }

    /// Whether `url` is on the BMC itself: same scheme, host and port.
    /// Credentials and tokens are only ever sent there.
    pub(crate) fn same_origin(&self, url: &Url) -> bool {
        url.scheme() == self.base.scheme()
            && url.host_str() == self.base.host_str()
            && url.port_or_known_default() == self.base.port_or_known_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(a: &str, p: Option<u16>) -> (String, String) {
        let e = Endpoint::parse(a, p).unwrap();
        (e.base.to_string(), e.display)
    }

    #[test]
    fn https_is_the_default() {
        assert_eq!(
            parse("10.0.0.5", None),
            ("https://10.0.0.5/".into(), "10.0.0.5:443".into())
        );
        assert_eq!(
            parse("bmc-1.example.net:8443", None),
            (
                "https://bmc-1.example.net:8443/".into(),
                "bmc-1.example.net:8443".into()
            )
        );
        assert_eq!(parse("10.0.0.5", Some(444)).1, "10.0.0.5:444");
    }

    #[test]
    fn explicit_http_for_emulators() {
        assert_eq!(
            parse("http://127.0.0.1:8000", None),
            ("http://127.0.0.1:8000/".into(), "127.0.0.1:8000".into())
        );
        assert_eq!(parse("http://127.0.0.1", None).1, "127.0.0.1:80");
    }

    #[test]
    fn ipv6() {
        assert_eq!(parse("fd00::5", None).1, "[fd00::5]:443");
        assert_eq!(parse("[fd00::5]:8443", None).1, "[fd00::5]:8443");
    }

    #[test]
    fn refused_addresses_do_not_echo_credentials() {
        for bad in ["http://root:calvin@10.0.0.1", "root:calvin@10.0.0.1"] {
            let e = Endpoint::parse(bad, None).unwrap_err().to_string();
            assert!(!e.contains("calvin"), "{e}");
        }
        assert!(Endpoint::parse("ftp://10.0.0.1", None).is_err());
        assert!(Endpoint::parse("10.0.0.1/redfish/v1", None).is_err());
        assert!(Endpoint::parse("  ", None).is_err());
    }

    #[test]
    fn a_url_may_name_one_system() {
        let e = Endpoint::parse(
            "http://127.0.0.1:8001/redfish/v1/Systems/0b3e0e9c-1a2b-4c5d-8e9f-000000000001",
            None,
        )
        .unwrap();
        assert_eq!(e.base.as_str(), "http://127.0.0.1:8001/");
        assert_eq!(e.display, "127.0.0.1:8001");
        assert_eq!(
            e.system.as_deref(),
            Some("/redfish/v1/Systems/0b3e0e9c-1a2b-4c5d-8e9f-000000000001")
        );
        let e = Endpoint::parse(
            "https://bmc/redfish/v1/Systems/System.Embedded.1/",
            Some(8443),
        )
        .unwrap();
        assert_eq!(
            e.system.as_deref(),
            Some("/redfish/v1/Systems/System.Embedded.1")
        );
        assert_eq!(e.display, "bmc:8443");
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:8000/", None)
                .unwrap()
                .system,
            None
        );
        for bad in [
            "http://127.0.0.1/redfish/v1",
            "http://127.0.0.1/redfish/v1/Systems/",
            "http://127.0.0.1/redfish/v1/Systems/1/Bios",
            "http://127.0.0.1/redfish/v1/Managers/1",
            "http://127.0.0.1/redfish/v1/Systems/%2e%2e",
            "http://127.0.0.1/redfish/v1/Systems/1?x=1",
            "http://127.0.0.1/redfish/v1/Systems/1#f",
        ] {
            assert!(Endpoint::parse(bad, None).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn origin_check() {
        let e = Endpoint::parse("http://127.0.0.1:8000", None).unwrap();
        assert!(e.same_origin(&Url::parse("http://127.0.0.1:8000/x").unwrap()));
        assert!(!e.same_origin(&Url::parse("http://127.0.0.2:8000/x").unwrap()));
        assert!(!e.same_origin(&Url::parse("https://127.0.0.1:8000/x").unwrap()));
        assert!(!e.same_origin(&Url::parse("http://127.0.0.1:8001/x").unwrap()));
    }
}
