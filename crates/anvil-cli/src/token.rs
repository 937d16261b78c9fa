//! `anvil token …`: API tokens.
//!
//! In table mode `token create` prints the secret alone on stdout and the
//! explanation on stderr, so both `TOKEN=$(anvil token create ci)` and
//! `anvil token create ci | tail -1` capture exactly the secret. With
//! `-o json` or `-o yaml` it prints the whole `TokenCreated` body, secret
//! included.

use crate::GlobalOpts;
use crate::client::Client;
use crate::error::CliError;
use crate::output::{self, OutputFormat, render, token_created_note, token_created_table};
use anvil_api_types::TokenCreate;
use clap::builder::NonEmptyStringValueParser;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use uuid::Uuid;

/// Manage API tokens.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum TokenCmd {
    /// Create an API token; its secret is printed this once.
    ///
    /// In table mode stdout gets only the secret (the note goes to stderr),
    /// so `TOKEN=$(anvil token create ci)` captures exactly the secret.
    /// -o json and -o yaml print the whole token, secret included.
    Create(TokenCreateArgs),
    /// List the API tokens (without secrets).
    #[command(visible_alias = "ls")]
    List,
    /// Revoke an API token.
    Revoke {
        /// Token id, as shown by `token list`.
        id: Uuid,
    },
}

/// Options of `token create`. With `--local` the `anvil` binary creates the
/// token directly in the database, without the API: that is how the first
/// token is made, when no token exists to authenticate with.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct TokenCreateArgs {
    /// A name saying what the token is for, e.g. ansible. Required unless
    /// --local, where it defaults to "local".
    #[arg(value_parser = NonEmptyStringValueParser::new(), required_unless_present = "local")]
    pub name: Option<String>,
    /// Write the token straight into the database instead of calling the API.
    #[arg(long)]
    pub local: bool,
    /// Data directory of the server (with --local).
    #[arg(long, value_name = "DIR", requires = "local")]
    pub data_dir: Option<PathBuf>,
    /// Database of the server (with --local).
    #[arg(long, value_name = "URL", requires = "local")]
    pub database_url: Option<String>,
}

/// Prints a new token as `token create` does (used by `--local` too, so both
/// paths print the same thing).
pub fn print_token_created(
    created: &anvil_api_types::TokenCreated,
    format: OutputFormat,
) -> Result<(), CliError> {
    if format == OutputFormat::Table {
        eprint!("{}", token_created_note(created));
    }
    output::print(&render(format, created, token_created_table)?)
}

/// Runs a `token` subcommand against the API. `token create --local` is not
/// handled here: the `anvil` binary, which owns the database, must intercept it.
pub async fn run_token(g: &GlobalOpts, cmd: TokenCmd) -> Result<(), CliError> {
    match cmd {
        TokenCmd::Create(args) => {
            if args.local {
                return Err(CliError::Internal(
                    "--local is handled by the anvil binary".into(),
                ));
            }
            let name = args
                .name
                .ok_or_else(|| CliError::Usage("token create needs a NAME".into()))?;
            let created = Client::from_opts(g)?
                .create_token(&TokenCreate { name })
                .await?;
            print_token_created(&created, g.output)
        }
        TokenCmd::List => {
            let tokens = Client::from_opts(g)?.list_tokens().await?;
            output::print(&render(
                g.output,
                tokens.as_slice(),
                output::token_list_table,
            )?)
        }
        TokenCmd::Revoke { id } => {
            Client::from_opts(g)?.revoke_token(id).await?;
            if g.output == OutputFormat::Table {
                output::print(&format!("Revoked token {id}.\n"))?;
            }
            Ok(())
        }
    }
}
