//! Integration tests of the web UI: one binary, a real server per test.

mod browser;
mod deploy;
mod hardware;
mod http;
mod images;
mod instances;
mod netbox;
mod power;
mod support;
