//! Where passwords come from. There is deliberately no way to pass one as a
//! command-line argument: arguments are visible to every user through `ps`
//! and end up in shell history.

use crate::error::CliError;
use clap::Args;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use tokio::io::AsyncBufReadExt;

/// The password of a user: from a file, from an environment variable, or
/// else one line read from stdin.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct PasswordArgs {
    /// Read the password from the first line of FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "password_env")]
    pub password_file: Option<PathBuf>,
    /// Read the password from the environment variable VAR.
    #[arg(long, value_name = "VAR")]
    pub password_env: Option<String>,
}

impl PasswordArgs {
    /// The password from the chosen source; with neither flag, one line from
    /// stdin (prompting on stderr when stdin is a terminal; the input is echoed).
    pub(crate) async fn read(&self, prompt: &str) -> Result<String, CliError> {
        match from_file_or_env(self.password_file.as_deref(), self.password_env.as_deref())? {
            Some(p) => Ok(p),
            None => from_stdin(prompt).await,
        }
    }
}

/// The secret from `file` or from the environment variable `env`, or `None`
/// when neither is given.
pub(crate) fn from_file_or_env(
    file: Option<&Path>,
    env: Option<&str>,
) -> Result<Option<String>, CliError> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            CliError::Usage(format!("cannot read password file {}: {e}", path.display()))
        })?;
        return non_empty(
            first_line(&text),
            &format!("password file {}", path.display()),
        )
        .map(Some);
    }
    if let Some(var) = env {
        let value = std::env::var(var).map_err(|e| {
            CliError::Usage(format!(
                "cannot read password from environment variable {var}: {e}"
            ))
        })?;
        return non_empty(&value, &format!("environment variable {var}")).map(Some);
    }
    Ok(None)
}

async fn from_stdin(prompt: &str) -> Result<String, CliError> {
    if std::io::stdin().is_terminal() {
        eprint!("{prompt}");
    }
    let mut line = String::new();
    let read = tokio::io::BufReader::new(tokio::io::stdin())
        .read_line(&mut line)
        .await
        .map_err(|e| CliError::Usage(format!("cannot read the password from stdin: {e}")))?;
    if read == 0 {
        return Err(CliError::Usage(
            "no password on stdin; use --password-file or --password-env".into(),
        ));
    }
    non_empty(first_line(&line), "the password read from stdin")
}

/// The first line without its line ending, so a file written by `echo`
/// holds the same password as one written by `printf`.
fn first_line(text: &str) -> &str {
    let line = text.split('\n').next().unwrap_or("");
    line.strip_suffix('\r').unwrap_or(line)
}

fn non_empty(secret: &str, source: &str) -> Result<String, CliError> {
    if secret.is_empty() {
        Err(CliError::Usage(format!("{source} is empty")))
    } else {
        Ok(secret.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_line_drops_the_line_ending_only() {
        assert_eq!(first_line("s3cret\n"), "s3cret");
        assert_eq!(first_line("s3cret\r\n"), "s3cret");
        assert_eq!(first_line(" with spaces \nsecond"), " with spaces ");
        assert_eq!(first_line("no newline"), "no newline");
        assert_eq!(first_line(""), "");
    }

    #[test]
    fn password_file_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        std::fs::write(&good, "hunter2\n").unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();

        assert_eq!(
            from_file_or_env(Some(&good), None).unwrap().as_deref(),
            Some("hunter2")
        );
        let e = from_file_or_env(Some(&empty), None).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("is empty"), "{e}");
        let e = from_file_or_env(Some(&dir.path().join("missing")), None).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(
            e.to_string().starts_with("cannot read password file"),
            "{e}"
        );
    }

    #[test]
    fn env_source_and_no_source() {
        // PATH is set in any test environment; reading it proves the lookup.
        let path = std::env::var("PATH").unwrap();
        assert_eq!(from_file_or_env(None, Some("PATH")).unwrap(), Some(path));
        let e = from_file_or_env(None, Some("ANVIL_TEST_SURELY_UNSET_VARIABLE")).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert_eq!(from_file_or_env(None, None).unwrap(), None);
    }
}
