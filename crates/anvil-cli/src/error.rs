//! Errors of the client commands and the exit codes they map to.
//!
//! Shell scripts branch on the exit code, so these numbers are part of the
//! command-line interface and must stay stable across releases:
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | success |
//! | 1 | any other failure: an internal error, an unexpected response from the server |
//! | 2 | usage or bad input: a flag clap refused (clap exits with 2 itself), a local validation error, an unreadable password file, or a request the server refused as invalid (400, 413, 422) |
//! | 3 | not found (404): no such machine, token or user |
//! | 4 | conflict (409): a duplicate hostname or MAC, a lifecycle transition that is not allowed |
//! | 5 | authentication or authorization (401, 403), or no token given |
//! | 6 | the server cannot be reached: connection refused, DNS failure, TLS failure, timeout |
//! | 7 | server error (5xx, except 502) |
//! | 8 | a BMC, NetBox or a job failed: the API's 502 (the BMC or NetBox refused, failed or did not answer), a `--wait` with failed jobs, a machine that did not come up in `rack up`, a deployment, release or rescue that failed under `--wait` |
//!
//! For example, `anvil machine rm node-01` exits with 3 when the machine is
//! already gone, which lets a playbook treat the removal as idempotent.

use anvil_api_types::Problem;

/// A failed client command. `Display` is one human line, printed by the
/// `anvil` binary as `anvil: <message>`; [`CliError::exit_code`] is the
/// process exit status.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad input caught before anything was sent.
    #[error("{0}")]
    Usage(String),
    /// The server answered with an error status. Bodies that are not
    /// `application/problem+json` (a proxy's HTML page, say) are turned into a
    /// problem of type `about:blank` so callers see a single shape. Boxed to
    /// keep `Result<_, CliError>` small.
    #[error("{}", api_message(*status, problem))]
    Api { status: u16, problem: Box<Problem> },
    /// Neither `--token` nor `ANVIL_TOKEN` was given.
    #[error(
        "no API token: pass --token or set ANVIL_TOKEN \
         (create one with `anvil token create --local NAME`)"
    )]
    NoToken,
    /// The request did not get an answer: connection refused, DNS, TLS, timeout.
    #[error("cannot reach the server at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The server answered with something this client does not understand.
    #[error("unexpected response from the server: {0}")]
    Protocol(String),
    /// Anything else, e.g. the HTTP client could not be set up.
    #[error("{0}")]
    Internal(String),
    /// Writing the result to stdout failed.
    #[error("cannot write output: {0}")]
    Output(#[source] std::io::Error),
    /// Some of the jobs (or machines) failed: `(failed, total)`.
    #[error("{0} of {1} failed")]
    JobsFailed(usize, usize),
    /// A followed deployment, release or rescue ended without success.
    #[error("{hostname}: {what} failed: {reason}")]
    RunFailed {
        hostname: String,
        what: String,
        reason: String,
    },
}

impl CliError {
    /// The process exit status for this error; see the module documentation.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Api { status, .. } => match status {
                400 | 413 | 422 => 2,
                404 => 3,
                409 => 4,
                401 | 403 => 5,
                502 => 8,
                500..=599 => 7,
                _ => 1,
            },
            CliError::NoToken => 5,
            CliError::Unreachable { .. } => 6,
            CliError::Protocol(_) | CliError::Internal(_) | CliError::Output(_) => 1,
            CliError::JobsFailed(..) | CliError::RunFailed { .. } => 8,
        }
    }

    /// Classifies a transport error of reqwest. `url` is named in the message
    /// because the usual cause is a wrong `--url`.
    pub(crate) fn from_reqwest(e: reqwest::Error, url: &str) -> CliError {
        if e.is_connect() || e.is_timeout() || e.is_request() {
            CliError::Unreachable {
                url: url.to_string(),
                reason: if e.is_timeout() {
                    "timed out".to_string()
                } else {
                    root_cause(&e)
                },
            }
        } else if e.is_decode() || e.is_body() {
            CliError::Protocol(root_cause(&e))
        } else {
            CliError::Internal(root_cause(&e))
        }
    }
}

/// The innermost message of an error chain: reqwest's own message is a
/// generic "error sending request", the useful part ("Connection refused",
/// "invalid peer certificate") is at the bottom.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// One line: the problem's detail (falling back to its title), plus the id of
/// the existing machine for duplicates so a script or a human can go look at it.
fn api_message(status: u16, p: &Problem) -> String {
    let mut msg = if !p.detail.trim().is_empty() {
        p.detail.trim().to_string()
    } else if !p.title.trim().is_empty() {
        p.title.trim().to_string()
    } else {
        format!("the server answered with status {status}")
    };
    if let Some(id) = p.existing_id {
        msg.push_str(&format!(" (existing machine: {id})"));
    }
    msg.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use anvil_api_types::problem_types;

    fn problem(status: u16, type_: &str, detail: &str) -> Problem {
        Problem {
            type_: type_.to_string(),
            title: "Title".to_string(),
            status,
            detail: detail.to_string(),
            instance: None,
            field: None,
            existing_id: None,
            current_state: None,
        }
    }

    fn api(status: u16) -> CliError {
        CliError::Api {
            status,
            problem: Box::new(problem(status, "about:blank", "x")),
        }
    }

    #[test]
    fn exit_codes_are_the_documented_ones() {
        assert_eq!(CliError::Internal("x".into()).exit_code(), 1);
        assert_eq!(CliError::Protocol("x".into()).exit_code(), 1);
        assert_eq!(CliError::Output(std::io::Error::other("x")).exit_code(), 1);
        assert_eq!(CliError::Usage("x".into()).exit_code(), 2);
        assert_eq!(api(400).exit_code(), 2);
        assert_eq!(api(413).exit_code(), 2);
        assert_eq!(api(422).exit_code(), 2);
        assert_eq!(api(404).exit_code(), 3);
        assert_eq!(api(409).exit_code(), 4);
        assert_eq!(api(401).exit_code(), 5);
        assert_eq!(api(403).exit_code(), 5);
        assert_eq!(CliError::NoToken.exit_code(), 5);
        let unreachable = CliError::Unreachable {
            url: "http://x".into(),
            reason: "refused".into(),
        };
        assert_eq!(unreachable.exit_code(), 6);
        assert_eq!(api(500).exit_code(), 7);
        // 502 is Anvil's "the BMC failed", not a server fault.
        assert_eq!(api(502).exit_code(), 8);
        assert_eq!(CliError::JobsFailed(1, 3).exit_code(), 8);
        let failed = CliError::RunFailed {
            hostname: "node-01".into(),
            what: "deployment".into(),
            reason: "write_image failed: sha256 mismatch".into(),
        };
        assert_eq!(failed.exit_code(), 8);
        assert_eq!(
            failed.to_string(),
            "node-01: deployment failed: write_image failed: sha256 mismatch"
        );
        assert_eq!(api(503).exit_code(), 7);
        // Statuses that point at a client bug rather than at the input.
        assert_eq!(api(405).exit_code(), 1);
        assert_eq!(api(415).exit_code(), 1);
    }

    #[test]
    fn duplicate_message_names_the_existing_machine() {
        let id = uuid::Uuid::nil();
        let mut p = problem(
            409,
            problem_types::DUPLICATE,
            "a machine with hostname node-01 already exists",
        );
        p.existing_id = Some(id);
        let e = CliError::Api {
            status: 409,
            problem: Box::new(p),
        };
        assert_eq!(
            e.to_string(),
            format!("a machine with hostname node-01 already exists (existing machine: {id})")
        );
        assert_eq!(e.exit_code(), 4);
    }

    #[test]
    fn message_is_one_line_and_falls_back_to_the_title() {
        let e = CliError::Api {
            status: 500,
            problem: Box::new(problem(500, "about:blank", "line one\nline two")),
        };
        assert_eq!(e.to_string(), "line one line two");
        let e = CliError::Api {
            status: 500,
            problem: Box::new(problem(500, "about:blank", " ")),
        };
        assert_eq!(e.to_string(), "Title");
    }

    #[test]
    fn root_cause_is_the_innermost_error() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused",
        ));
        assert_eq!(root_cause(&e), "Connection refused");
    }
}
