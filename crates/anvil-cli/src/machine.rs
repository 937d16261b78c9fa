//! `anvil machine …`: the inventory.

use crate::GlobalOpts;
use crate::client::{Client, parse_segment};
use crate::error::CliError;
use crate::output::{self, OutputFormat, machine_list_table, machine_table, render};
use crate::secret;
use anvil_api_types::{
    Bmc, BmcInput, Interface, InterfaceInput, MACHINE_SORT_KEYS, Machine, MachineCreate,
    MachineList, MachinePatch, MachineQuery, StateChange,
};
use anvil_types::{Architecture, BmcDriver, Firmware, Hostname, MacAddr, MachineState};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Subcommand};
use std::collections::HashSet;
use std::path::PathBuf;
use std::str::FromStr;

/// Manage the machine inventory.
#[derive(Debug, Clone, PartialEq, Subcommand)]
pub enum MachineCmd {
    /// List machines: one page, or every page with --all.
    #[command(visible_alias = "ls")]
    List(MachineListArgs),
    /// Show one machine, with its interfaces and BMC.
    Show {
        /// Machine id or hostname.
        #[arg(value_parser = parse_segment)]
        target: String,
    },
    /// Enroll a machine.
    Add(Box<MachineAddArgs>),
    /// Change a machine: only the given fields change.
    Edit(Box<MachineEditArgs>),
    /// Delete a machine. Exits with 3 when there is no such machine, so a
    /// script can treat "already gone" as success.
    #[command(visible_alias = "delete")]
    Rm {
        /// Machine id or hostname.
        #[arg(value_parser = parse_segment)]
        target: String,
    },
    /// Commission machines: boot them into the agent, take the hardware
    /// inventory (and run the chosen tests); `ready` or `failed` after.
    Commission(crate::commission::CommissionArgs),
    /// Deploy an image: erase the root disk, write the image (sha256
    /// verified), grow the root, add cloud-init's data, boot the disk.
    Deploy(Box<crate::deploy::DeployArgs>),
    /// Release a machine: erase its disks and make it ready again.
    Release(crate::deploy::ReleaseArgs),
    /// Boot the rescue system (SSH as root, disks untouched), or leave it
    /// with --exit.
    Rescue(crate::deploy::RescueArgs),
}

/// Filters and paging of `machine list`.
#[derive(Debug, Clone, Default, PartialEq, Args)]
pub struct MachineListArgs {
    /// Only machines in this lifecycle state.
    #[arg(long, ignore_case = true, value_parser = choice(&MachineState::ALL, MachineState::as_str))]
    pub state: Option<MachineState>,
    /// Only machines with this tag.
    #[arg(long)]
    pub tag: Option<String>,
    /// Only the machine with an interface of this MAC address.
    #[arg(long)]
    pub mac: Option<MacAddr>,
    /// Only machines whose hostname contains this text (case-insensitive).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Sort key: hostname (default), created_at, updated_at or state; prefix
    /// with - for descending order.
    #[arg(long, value_name = "KEY", allow_hyphen_values = true, value_parser = parse_sort)]
    pub sort: Option<String>,
    /// Page size, 1 to 1000 (server default 100).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: Option<u32>,
    /// Number of machines to skip.
    #[arg(long)]
    pub offset: Option<u64>,
    /// Follow the pages to the end; json/yaml then print one merged list
    /// (all items, no next_offset; offset and limit are the first page's).
    #[arg(long)]
    pub all: bool,
}

/// Options of `machine add`.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct MachineAddArgs {
    /// Host name (RFC 1123; stored lower-case).
    #[arg(long)]
    pub hostname: Hostname,
    #[command(flatten)]
    pub fields: MachineFields,
}

/// Options of `machine edit`.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct MachineEditArgs {
    /// Machine id or hostname.
    #[arg(value_parser = parse_segment)]
    pub target: String,
    /// Rename the machine.
    #[arg(long)]
    pub hostname: Option<Hostname>,
    #[command(flatten)]
    pub fields: MachineFields,
    /// Move the machine to this lifecycle state, after the other changes.
    #[arg(long, value_name = "STATE", ignore_case = true,
          value_parser = choice(&MachineState::ALL, MachineState::as_str))]
    pub set_state: Option<MachineState>,
    /// Why (required for failed; kept for failed and broken).
    #[arg(long, requires = "set_state")]
    pub reason: Option<String>,
}

/// The fields `add` and `edit` share; on `edit`, an absent option leaves the
/// field alone.
#[derive(Debug, Clone, Default, PartialEq, Args)]
pub struct MachineFields {
    /// CPU architecture.
    #[arg(long = "arch", value_name = "ARCH", ignore_case = true,
          value_parser = choice(Architecture::ALL, Architecture::as_str))]
    pub architecture: Option<Architecture>,
    /// Boot firmware.
    #[arg(long, ignore_case = true, value_parser = choice(Firmware::ALL, Firmware::as_str))]
    pub firmware: Option<Firmware>,
    /// Manufacturer, e.g. Dell.
    #[arg(long)]
    pub vendor: Option<String>,
    /// Product name, e.g. PowerEdge R650.
    #[arg(long)]
    pub model: Option<String>,
    /// Serial number.
    #[arg(long)]
    pub serial: Option<String>,
    /// A tag; repeat for several. On edit, the given tags replace all tags.
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// MAC address of an interface; repeat for several, the first is the PXE
    /// boot interface. On edit, the given MACs replace all interfaces (names
    /// and IPv4 reservations of MACs the machine already has are kept).
    #[arg(long = "mac", value_name = "MAC")]
    pub macs: Vec<MacAddr>,
    /// Free-form facts, a JSON object, e.g. '{"rack": "r1"}'. On edit, replaces the facts.
    #[arg(long, value_name = "JSON", value_parser = parse_facts)]
    pub facts: Option<serde_json::Value>,
    #[command(flatten)]
    pub bmc: BmcArgs,
}

/// The BMC options. There is no password flag on purpose: arguments are
/// visible to every user through `ps` and end up in shell history. On edit, the given options are applied over the
/// machine's current BMC, and the stored password is kept unless a new one
/// is given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct BmcArgs {
    /// BMC protocol (needed to add a BMC).
    #[arg(long, value_name = "DRIVER", ignore_case = true,
          value_parser = choice(BmcDriver::ALL, BmcDriver::as_str))]
    pub bmc_driver: Option<BmcDriver>,
    /// BMC host name or IP address (needed to add a BMC).
    #[arg(long, value_name = "HOST")]
    pub bmc_address: Option<String>,
    /// BMC port, if not the protocol's default.
    #[arg(long, value_name = "PORT")]
    pub bmc_port: Option<u16>,
    /// User name to log in to the BMC.
    #[arg(long, value_name = "USER")]
    pub bmc_username: Option<String>,
    /// Read the BMC password from the first line of FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "bmc_password_env")]
    pub bmc_password_file: Option<PathBuf>,
    /// Read the BMC password from the environment variable VAR.
    #[arg(long, value_name = "VAR")]
    pub bmc_password_env: Option<String>,
    /// Verify the BMC's TLS certificate (default true).
    #[arg(long, value_name = "BOOL")]
    pub bmc_verify_tls: Option<bool>,
}

/// Runs a `machine` subcommand. Local validation (flags, password files)
/// happens before the server is contacted, so bad input never leaves a
/// half-applied change.
pub async fn run_machine(g: &GlobalOpts, cmd: MachineCmd) -> Result<(), CliError> {
    match cmd {
        MachineCmd::List(args) => {
            let client = Client::from_opts(g)?;
            let list = if args.all {
                list_all(&client, args.query()).await?
            } else {
                client.list_machines(&args.query()).await?
            };
            output::print(&render(g.output, &list, machine_list_table)?)?;
            if g.output == OutputFormat::Table
                && let Some(next) = list.next_offset
            {
                eprintln!(
                    "Showing {} of {} machines; use --all, or --offset {next} for the next page.",
                    list.items.len(),
                    list.total
                );
            }
            Ok(())
        }
        MachineCmd::Show { target } => {
            let machine = Client::from_opts(g)?.get_machine(&target).await?;
            output::print(&render(g.output, &machine, machine_table)?)
        }
        MachineCmd::Add(args) => {
            let body = args.create_body()?;
            let machine = Client::from_opts(g)?.create_machine(&body).await?;
            output::print(&render(g.output, &machine, machine_table)?)
        }
        MachineCmd::Edit(args) => {
            let machine = edit(g, &args).await?;
            output::print(&render(g.output, &machine, machine_table)?)
        }
        MachineCmd::Commission(args) => crate::commission::run_commission(g, args).await,
        MachineCmd::Deploy(args) => crate::deploy::run_deploy(g, *args).await,
        MachineCmd::Release(args) => crate::deploy::run_release(g, args).await,
        MachineCmd::Rescue(args) => crate::deploy::run_rescue(g, args).await,
        MachineCmd::Rm { target } => {
            Client::from_opts(g)?.delete_machine(&target).await?;
            if g.output == OutputFormat::Table {
                output::print(&format!("Deleted machine {target}.\n"))?;
            }
            Ok(())
        }
    }
}

impl MachineListArgs {
    fn query(&self) -> MachineQuery {
        MachineQuery {
            state: self.state.map(|s| s.to_string()),
            tag: self.tag.clone(),
            mac: self.mac.map(|m| m.to_string()),
            hostname: self.hostname.clone(),
            sort: self.sort.clone(),
            limit: self.limit,
            offset: self.offset,
        }
    }
}

/// Fetches every page from `query.offset` on and merges them into one list.
async fn list_all(client: &Client, mut query: MachineQuery) -> Result<MachineList, CliError> {
    let mut all = client.list_machines(&query).await?;
    let mut next = all.next_offset;
    while let Some(offset) = next {
        // A server that does not advance would otherwise loop forever.
        if offset <= query.offset.unwrap_or(0) {
            return Err(CliError::Protocol(format!(
                "next_offset {offset} does not advance past offset {}",
                query.offset.unwrap_or(0)
            )));
        }
        query.offset = Some(offset);
        let page = client.list_machines(&query).await?;
        next = if page.items.is_empty() {
            None
        } else {
            page.next_offset
        };
        all.items.extend(page.items);
        all.total = page.total;
    }
    all.next_offset = None;
    Ok(all)
}

impl MachineAddArgs {
    pub(crate) fn create_body(&self) -> Result<MachineCreate, CliError> {
        let f = &self.fields;
        Ok(MachineCreate {
            hostname: self.hostname.to_string(),
            architecture: f.architecture,
            firmware: f.firmware,
            vendor: f.vendor.clone(),
            model: f.model.clone(),
            serial: f.serial.clone(),
            tags: f.tags.clone(),
            facts: f.facts.clone(),
            interfaces: interfaces(&f.macs, &[])?,
            bmc: f.bmc.to_input(None, f.bmc.password()?)?,
        })
    }
}

/// `machine edit`: a PATCH for the fields, then the state endpoint for
/// `--set-state`. The machine is fetched first only when the change builds
/// on its current interfaces or BMC.
async fn edit(g: &GlobalOpts, args: &MachineEditArgs) -> Result<Machine, CliError> {
    let patch_wanted = args.hostname.is_some() || args.fields != MachineFields::default();
    if !patch_wanted && args.set_state.is_none() {
        return Err(nothing_to_change());
    }
    if args.set_state == Some(MachineState::Failed)
        && args.reason.as_deref().is_none_or(|r| r.trim().is_empty())
    {
        return Err(CliError::Usage(
            "moving a machine to failed needs --reason".into(),
        ));
    }
    let bmc_password = args.fields.bmc.password()?;
    let client = Client::from_opts(g)?;

    let patched = if patch_wanted {
        let needs_current = !args.fields.macs.is_empty() || args.fields.bmc != BmcArgs::default();
        let current = if needs_current {
            Some(client.get_machine(&args.target).await?)
        } else {
            None
        };
        let patch = args.patch(current.as_ref(), bmc_password)?;
        Some(client.patch_machine(&args.target, &patch).await?)
    } else {
        None
    };

    match args.set_state {
        Some(state) => {
            // After a rename the old hostname no longer names the machine.
            let target = patched.map_or_else(|| args.target.clone(), |m| m.id.to_string());
            let change = StateChange {
                state,
                reason: args.reason.clone(),
            };
            client.change_state(&target, &change).await
        }
        None => patched.ok_or_else(nothing_to_change),
    }
}

fn nothing_to_change() -> CliError {
    CliError::Usage("nothing to change: give at least one option (see --help)".into())
}

impl MachineEditArgs {
    pub(crate) fn patch(
        &self,
        current: Option<&Machine>,
        bmc_password: Option<String>,
    ) -> Result<MachinePatch, CliError> {
        let f = &self.fields;
        let interfaces = if f.macs.is_empty() {
            None
        } else {
            let existing = current.map_or(&[][..], |m| &m.interfaces);
            Some(interfaces(&f.macs, existing)?)
        };
        let bmc = f
            .bmc
            .to_input(current.and_then(|m| m.bmc.as_ref()), bmc_password)?;
        Ok(MachinePatch {
            hostname: self.hostname.as_ref().map(Hostname::to_string),
            architecture: f.architecture.map(Some),
            firmware: f.firmware.map(Some),
            vendor: f.vendor.clone().map(Some),
            model: f.model.clone().map(Some),
            serial: f.serial.clone().map(Some),
            tags: (!f.tags.is_empty()).then(|| f.tags.clone()),
            facts: f.facts.clone(),
            interfaces,
            bmc: bmc.map(Some),
        })
    }
}

/// The interfaces for `macs`, the first one PXE. An interface the machine
/// already has (same MAC) keeps its name and IPv4 reservation; a new one gets
/// the first `eth<N>` name not taken, so replacing the list never renames or
/// unreserves what stays.
fn interfaces(macs: &[MacAddr], existing: &[Interface]) -> Result<Vec<InterfaceInput>, CliError> {
    let mut seen = HashSet::new();
    if let Some(dup) = macs.iter().find(|m| !seen.insert(**m)) {
        return Err(CliError::Usage(format!("--mac {dup} is given twice")));
    }
    let known = |mac: &MacAddr| existing.iter().find(|i| i.mac == *mac);
    let mut taken: HashSet<String> = macs
        .iter()
        .filter_map(|m| known(m).map(|i| i.name.clone()))
        .collect();
    let mut n = 0;
    let mut fresh_name = || loop {
        let name = format!("eth{n}");
        n += 1;
        if taken.insert(name.clone()) {
            return name;
        }
    };
    Ok(macs
        .iter()
        .enumerate()
        .map(|(idx, mac)| {
            let (name, ipv4) = match known(mac) {
                Some(i) => (i.name.clone(), i.ipv4.clone()),
                None => (fresh_name(), None),
            };
            InterfaceInput {
                mac: mac.to_string(),
                name: Some(name),
                pxe: Some(idx == 0),
                ipv4,
            }
        })
        .collect())
}

impl BmcArgs {
    /// The BMC password from the chosen source, if one was given.
    fn password(&self) -> Result<Option<String>, CliError> {
        secret::from_file_or_env(
            self.bmc_password_file.as_deref(),
            self.bmc_password_env.as_deref(),
        )
    }

    /// The BMC to send: `None` when no BMC option was given, else the
    /// options over `existing`. `password` stays `None` to keep the stored one.
    fn to_input(
        &self,
        existing: Option<&Bmc>,
        password: Option<String>,
    ) -> Result<Option<BmcInput>, CliError> {
        if *self == BmcArgs::default() {
            return Ok(None);
        }
        let driver = self
            .bmc_driver
            .or(existing.map(|b| b.driver))
            .ok_or_else(|| CliError::Usage("--bmc-driver is needed to add a BMC".into()))?;
        let address = self
            .bmc_address
            .clone()
            .or_else(|| existing.map(|b| b.address.clone()))
            .ok_or_else(|| CliError::Usage("--bmc-address is needed to add a BMC".into()))?;
        Ok(Some(BmcInput {
            driver,
            address,
            port: self.bmc_port.or(existing.and_then(|b| b.port)),
            username: self
                .bmc_username
                .clone()
                .or_else(|| existing.and_then(|b| b.username.clone())),
            password,
            verify_tls: self.bmc_verify_tls.or(existing.map(|b| b.verify_tls)),
        }))
    }
}

/// A parser accepting the names in `all`, so `--help` lists them.
fn choice<T>(all: &'static [T], name: fn(T) -> &'static str) -> impl TypedValueParser<Value = T>
where
    T: Copy + FromStr + Send + Sync + 'static,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    PossibleValuesParser::new(all.iter().map(|v| name(*v))).try_map(|s| s.parse::<T>())
}

fn parse_sort(s: &str) -> Result<String, String> {
    let key = s.strip_prefix('-').unwrap_or(s);
    if MACHINE_SORT_KEYS.contains(&key) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "expected one of {}, optionally prefixed with - for descending order",
            MACHINE_SORT_KEYS.join(", ")
        ))
    }
}

fn parse_facts(s: &str) -> Result<serde_json::Value, String> {
    match serde_json::from_str(s) {
        Ok(v @ serde_json::Value::Object(_)) => Ok(v),
        Ok(_) => Err("expected a JSON object, e.g. '{\"rack\": \"r1\"}'".into()),
        Err(e) => Err(format!("invalid JSON: {e}")),
    }
}
