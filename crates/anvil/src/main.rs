//! `anvil`: one binary that brings a rack from crates to running servers.
//!
//! This file only wires: it parses the command line and hands over to the
//! server (`serve.rs`), the configuration (`config.rs`) or the API client
//! (`anvil-cli`).

mod boot_services;
mod commissioning_config;
mod config;
mod deploy_config;
mod images_config;
mod netbox_config;
mod power_drivers;
mod serve;

use anvil_store::{Access, Store};
use clap::{Parser, Subcommand};
use config::{FlagOverrides, HttpOverride, LogFormat, LogOverride};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "anvil",
    version,
    about = "Bare-metal provisioning: DHCP, TFTP, HTTP boot, BMC control, inventory, NetBox sync"
)]
struct Cli {
    #[command(flatten)]
    global: anvil_cli::GlobalOpts,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: REST API, web UI and (with later releases) boot services.
    Serve(ServeArgs),
    /// Inspect configuration files.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Manage machines through the API.
    #[command(subcommand)]
    Machine(anvil_cli::MachineCmd),
    /// Manage API tokens.
    #[command(subcommand)]
    Token(anvil_cli::TokenCmd),
    /// Manage users of the web UI and API.
    #[command(subcommand)]
    User(anvil_cli::UserCmd),
    /// Enrol a machine by its BMC.
    Enroll(anvil_cli::EnrollArgs),
    /// Power machines on or off through their BMCs.
    #[command(subcommand)]
    Power(anvil_cli::PowerCmd),
    /// Boot machines from the network once (set PXE, then power on or reset).
    PxeBoot(anvil_cli::Targets),
    /// Rack bring-up from a manifest of BMCs.
    #[command(subcommand)]
    Rack(anvil_cli::RackCmd),
    /// Synchronise with NetBox: a sync (or its plan), the status.
    #[command(subcommand)]
    Netbox(anvil_cli::NetboxCmd),
    /// OS images: import (file or URL), list, rm.
    #[command(subcommand)]
    Image(anvil_cli::ImageCmd),
    /// The servers sharing the database: live, stopped, the leader.
    #[command(subcommand)]
    Instance(anvil_cli::InstanceCmd),
    /// Print the OpenAPI document of the REST API.
    Openapi,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, short = 'c', env = "ANVIL_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (SQLite database, secret key). Default ./anvil-data.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address of the API and web UI, e.g. 0.0.0.0:8080.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// postgres://… to use PostgreSQL instead of the embedded SQLite.
    #[arg(long)]
    database_url: Option<String>,
    /// Log filter, e.g. info or anvil=debug.
    #[arg(long)]
    log_level: Option<String>,
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Address of the TFTP service, e.g. 0.0.0.0:69.
    #[arg(long)]
    tftp_listen: Option<SocketAddr>,
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate a configuration file and print the effective configuration.
    Check { file: PathBuf },
}

fn main() -> ExitCode {
    // One TLS crypto provider for the whole process (see docs: rustls picks
    // none by itself when two are compiled in).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("anvil: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(dispatch(cli))
}

async fn dispatch(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(args) => serve_command(args).await,
        Command::Config(ConfigCmd::Check { file }) => {
            match config::load(Some(&file), FlagOverrides::default()) {
                Ok(cfg) => {
                    print!("{}", cfg.to_toml());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("anvil: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Openapi => {
            print!("{}", anvil_api::openapi_document());
            ExitCode::SUCCESS
        }
        Command::Token(anvil_cli::TokenCmd::Create(args)) if args.local => {
            local_token_create(args, cli.global.output).await
        }
        Command::Machine(cmd) => cli_result(anvil_cli::run_machine(&cli.global, cmd).await),
        Command::Token(cmd) => cli_result(anvil_cli::run_token(&cli.global, cmd).await),
        Command::User(cmd) => cli_result(anvil_cli::run_user(&cli.global, cmd).await),
        Command::Enroll(args) => cli_result(anvil_cli::run_enroll(&cli.global, args).await),
        Command::Power(cmd) => cli_result(anvil_cli::run_power(&cli.global, cmd).await),
        Command::PxeBoot(t) => cli_result(anvil_cli::run_pxe_boot(&cli.global, t).await),
        Command::Rack(cmd) => cli_result(anvil_cli::run_rack(&cli.global, cmd).await),
        Command::Netbox(cmd) => cli_result(anvil_cli::run_netbox(&cli.global, cmd).await),
        Command::Image(cmd) => cli_result(anvil_cli::run_image(&cli.global, cmd).await),
        Command::Instance(cmd) => cli_result(anvil_cli::run_instance(&cli.global, cmd).await),
    }
}

fn cli_result(r: Result<(), anvil_cli::CliError>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("anvil: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn serve_command(args: ServeArgs) -> ExitCode {
    let flags = FlagOverrides {
        data_dir: args.data_dir,
        database_url: args.database_url,
        http: args.listen.map(|listen| HttpOverride { listen }),
        log: (args.log_level.is_some() || args.log_format.is_some()).then_some(LogOverride {
            level: args.log_level,
            format: args.log_format,
        }),
        tftp: args
            .tftp_listen
            .map(|listen| config::TftpOverride { listen }),
    };
    let cfg = match config::load(args.config.as_deref(), flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("anvil: {e}");
            return ExitCode::from(2);
        }
    };
    serve::init_tracing(&cfg);
    match serve::run(cfg).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("anvil: {e:#}");
            tracing::error!(error = %format!("{e:#}"), "anvil serve failed");
            ExitCode::from(1)
        }
    }
}

/// `anvil token create --local`: makes an admin token by writing to the store
/// directly, as `maas apikey` does, so automation can bootstrap without the UI.
async fn local_token_create(
    args: anvil_cli::TokenCreateArgs,
    output: anvil_cli::OutputFormat,
) -> ExitCode {
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("./anvil-data"));
    let url = args
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("anvil.db").display()));
    if args.database_url.is_none() && !data_dir.join("anvil.db").exists() {
        eprintln!(
            "anvil: no database in {} (start `anvil serve --data-dir {}` once, or pass --database-url)",
            data_dir.display(),
            data_dir.display()
        );
        return ExitCode::from(2);
    }
    let store = match Store::open_with(&url, Access::Shared).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("anvil: {}", anvil_api::chain(&e));
            return ExitCode::from(1);
        }
    };
    // The key is not needed to mint a token; a throw-away one keeps this
    // command from creating a secret.key in a directory it only reads.
    let app = anvil_core::App::new(store.clone(), anvil_core::SecretBox::ephemeral());
    let owner = match app.list_users(&anvil_core::Principal::System).await {
        Ok(users) => users.into_iter().find(|u| u.is_admin),
        Err(e) => {
            eprintln!("anvil: {}", anvil_api::chain(&e));
            return ExitCode::from(1);
        }
    };
    let Some(owner) = owner else {
        eprintln!("anvil: the store has no administrator yet; start `anvil serve` once first");
        return ExitCode::from(2);
    };
    let name = args.name.clone().unwrap_or_else(|| "local".to_string());
    let result = app
        .create_token(&anvil_core::Principal::System, &name, Some(&owner.username))
        .await;
    store.close().await;
    match result {
        Ok(created) => cli_result(anvil_cli::print_token_created(&created, output)),
        Err(e) => {
            eprintln!("anvil: {}", anvil_api::chain(&e));
            ExitCode::from(1)
        }
    }
}
