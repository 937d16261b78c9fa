//! `anvil user …`: users of the web UI, who own API tokens.

use crate::GlobalOpts;
use crate::client::{Client, parse_segment};
use crate::error::CliError;
use crate::output::{self, OutputFormat, render, user_list_table, user_table};
use crate::secret::PasswordArgs;
use anvil_api_types::{PasswordChange, UserCreate};
use clap::Subcommand;

/// Manage users.
///
/// Passwords come from --password-file, --password-env or one line of
/// stdin, never from an argument.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum UserCmd {
    /// Create a user.
    Add {
        #[arg(value_parser = parse_segment)]
        username: String,
        /// Make the user an administrator.
        #[arg(long)]
        admin: bool,
        #[command(flatten)]
        password: PasswordArgs,
    },
    /// Set a user's password.
    Passwd {
        #[arg(value_parser = parse_segment)]
        username: String,
        #[command(flatten)]
        password: PasswordArgs,
    },
    /// List the users.
    #[command(visible_alias = "ls")]
    List,
}

/// Runs a `user` subcommand. The token is checked before the password is
/// asked for, so nobody types a password only to learn the call cannot work.
pub async fn run_user(g: &GlobalOpts, cmd: UserCmd) -> Result<(), CliError> {
    let client = Client::from_opts(g)?;
    match cmd {
        UserCmd::Add {
            username,
            admin,
            password,
        } => {
            let password = password.read(&format!("Password for {username}: ")).await?;
            let body = UserCreate {
                username,
                password,
                is_admin: admin,
            };
            let user = client.create_user(&body).await?;
            output::print(&render(g.output, &user, user_table)?)
        }
        UserCmd::Passwd { username, password } => {
            let password = password
                .read(&format!("New password for {username}: "))
                .await?;
            client
                .change_password(&username, &PasswordChange { password })
                .await?;
            if g.output == OutputFormat::Table {
                output::print(&format!("Changed the password of {username}.\n"))?;
            }
            Ok(())
        }
        UserCmd::List => {
            let users = client.list_users().await?;
            output::print(&render(g.output, users.as_slice(), user_list_table)?)
        }
    }
}
