//! `anvil instance list`: the `anvil serve` instances sharing the database,
//! which are live, which one leads (NetBox sync, power poller) and which one
//! answered (`*`). `-o json` prints the API's body.

use crate::GlobalOpts;
use crate::client::Client;
use crate::error::CliError;
use crate::output::{self, instance_list_table, render};
use anvil_api_types::InstanceList;
use clap::Subcommand;
use reqwest::Method;

/// The servers sharing the database.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum InstanceCmd {
    /// List the instances, live and stopped.
    List,
}

pub async fn run_instance(g: &GlobalOpts, cmd: InstanceCmd) -> Result<(), CliError> {
    let client = Client::from_opts(g)?;
    match cmd {
        InstanceCmd::List => {
            let list: InstanceList = client
                .json(client.request(Method::GET, &["instances"]))
                .await?;
            output::print(&render(g.output, &list, |l| instance_list_table(&l.items))?)
        }
    }
}
