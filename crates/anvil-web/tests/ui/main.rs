//! Integration tests of the web UI: one binary, a real server per test.

mod browser;
mod deploy;
mod hardware;
mod http;
mod images;
mod netbox;
mod power;
mod support;
