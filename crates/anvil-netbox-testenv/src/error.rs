use std::path::PathBuf;
use std::process::ExitStatus;

/// Everything that can go wrong starting, seeding or listening to a test NetBox.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not create the instance directory")]
    TempDir(#[source] std::io::Error),
    #[error("could not run a scripts/netbox script")]
    Spawn(#[source] std::io::Error),
    #[error("instance.sh start failed ({status}):\n{stderr}\n{logs}")]
    Start {
        status: ExitStatus,
        stderr: String,
        logs: String,
    },
    #[error("could not read {path}")]
    ReadEnv {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} has no {key}")]
    MissingKey { path: PathBuf, key: String },
    #[error("could not build the HTTP client")]
    HttpClient(#[source] reqwest::Error),
    #[error("{method} {path}: request failed")]
    Request {
        method: String,
        path: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{method} {path}: HTTP {status}: {body}")]
    Status {
        method: String,
        path: String,
        status: u16,
        body: String,
    },
    #[error("{method} {path}: unexpected response {body}")]
    Response {
        method: String,
        path: String,
        body: String,
    },
    #[error("seed-bulk.py failed ({status}):\n{stderr}")]
    SeedBulk { status: ExitStatus, stderr: String },
    #[error("seed-bulk.py printed no JSON summary:\n{output}")]
    SeedBulkOutput {
        output: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("could not bind the webhook listener")]
    Bind(#[source] std::io::Error),
}
