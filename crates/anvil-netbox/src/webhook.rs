//! NetBox event-rule webhooks: signature verification and the parts of the
//! body Anvil acts on.
//!
//! NetBox signs a webhook with a secret as `X-Hook-Signature:
//! hex(HMAC-SHA512(secret, raw body))`. A request without the header or with
//! a wrong one is refused before its body is parsed.

use crate::model::nested_id;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha512;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the request has no X-Hook-Signature header")]
    Missing,
    #[error("X-Hook-Signature is not a hex HMAC-SHA512")]
    Malformed,
    #[error("X-Hook-Signature does not match the body")]
    Mismatch,
}

/// Checks `X-Hook-Signature` against the raw body, in constant time.
pub fn verify_signature(
    secret: &[u8],
    body: &[u8],
    header: Option<&str>,
) -> Result<(), SignatureError> {
    let header = header.map(str::trim).filter(|h| !h.is_empty());
    let given = hex::decode(header.ok_or(SignatureError::Missing)?)
        .map_err(|_| SignatureError::Malformed)?;
    if given.len() != 64 {
        return Err(SignatureError::Malformed);
    }
    let mut mac = Hmac::<Sha512>::new_from_slice(secret).map_err(|_| SignatureError::Mismatch)?;
    mac.update(body);
    mac.verify_slice(&given)
        .map_err(|_| SignatureError::Mismatch)
}

/// The signature NetBox would send (for tests and tools).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha512>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// What a webhook says happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEvent {
    /// `created`, `updated` or `deleted`.
    pub event: String,
    /// `dcim.device`, `dcim.interface`, `dcim.macaddress`, `ipam.ipaddress` …
    pub object_type: String,
    pub object_id: Option<u64>,
    /// The device concerned, when the object is or belongs to one.
    pub device_id: Option<u64>,
}

/// Parses a webhook body (NetBox 4.x: `object_type`; older ones: `model`).
pub fn parse_event(body: &[u8]) -> Result<WebhookEvent, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let o = v.as_object().ok_or("the body is not a JSON object")?;
    let event = o
        .get("event")
        .and_then(Value::as_str)
        .ok_or("no \"event\"")?
        .to_string();
    let object_type = match (o.get("object_type"), o.get("model")) {
        (Some(Value::String(t)), _) => t.clone(),
        (_, Some(Value::String(m))) => format!("dcim.{m}"),
        _ => return Err("no \"object_type\"".into()),
    };
    let data = o.get("data").and_then(Value::as_object);
    let object_id = data.and_then(|d| d.get("id")).and_then(Value::as_u64);
    let device_id = match object_type.as_str() {
        "dcim.device" => object_id,
        "dcim.interface" => data.and_then(|d| nested_id(d.get("device"))),
        "dcim.macaddress" | "ipam.ipaddress" => data
            .and_then(|d| d.get("assigned_object"))
            .and_then(Value::as_object)
            .and_then(|a| nested_id(a.get("device"))),
        _ => None,
    };
    Ok(WebhookEvent {
        event,
        object_type,
        object_id,
        device_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_round_trip_and_refusals() {
        let body = br#"{"event":"updated"}"#;
        let sig = sign(b"s3cret", body);
        assert_eq!(sig.len(), 128);
        assert_eq!(verify_signature(b"s3cret", body, Some(&sig)), Ok(()));
        assert_eq!(
            verify_signature(b"s3cret", body, Some(&sig.to_uppercase())),
            Ok(()),
            "hex case does not matter"
        );
        assert_eq!(
            verify_signature(b"s3cret", body, None),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify_signature(b"s3cret", body, Some(" ")),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify_signature(b"s3cret", body, Some("zz")),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_signature(b"s3cret", body, Some("abcd")),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_signature(b"other", body, Some(&sig)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(b"s3cret", br#"{"event":"deleted"}"#, Some(&sig)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn known_vector() {
        // python3 -c "import hmac,hashlib;print(hmac.new(b'key',b'The quick brown fox jumps over the lazy dog',hashlib.sha512).hexdigest())"
        assert_eq!(
            sign(b"key", b"The quick brown fox jumps over the lazy dog"),
            "b42af09057bac1e2d41708e48a902e09b5ff7f12ab428a4fe86653c73dd248fb82f948a549f7b791a5b41915ee4d1ec3935357e4e2317250d0372afa2ebeeb3a"
        );
    }

    #[test]
    fn parses_device_interface_and_mac_events() {
        let e = parse_event(
            br#"{"event":"updated","object_type":"dcim.device","data":{"id":5,"name":"n"}}"#,
        )
        .unwrap();
        assert_eq!((e.object_id, e.device_id), (Some(5), Some(5)));
        let e = parse_event(br#"{"event":"created","object_type":"dcim.interface","data":{"id":9,"device":{"id":5}}}"#).unwrap();
        assert_eq!(e.device_id, Some(5));
        let e = parse_event(br#"{"event":"deleted","object_type":"dcim.macaddress","data":{"id":3,"assigned_object":{"id":9,"device":{"id":5}}}}"#).unwrap();
        assert_eq!((e.event.as_str(), e.device_id), ("deleted", Some(5)));
        let e = parse_event(br#"{"event":"updated","model":"device","data":{"id":2}}"#).unwrap();
        assert_eq!(e.object_type, "dcim.device");
        let e = parse_event(br#"{"event":"updated","object_type":"dcim.site","data":{"id":2}}"#)
            .unwrap();
        assert_eq!(e.device_id, None);
    }

    #[test]
    fn malformed_bodies_are_errors() {
        assert!(parse_event(b"not json").is_err());
        assert!(parse_event(b"[]").is_err());
        assert!(parse_event(br#"{"object_type":"dcim.device"}"#).is_err());
        assert!(parse_event(br#"{"event":"updated"}"#).is_err());
    }
}
