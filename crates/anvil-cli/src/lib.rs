//! Anvil's command-line client: the `machine`, `token` and `user`
//! subcommands of the `anvil` binary, which talk to a server's REST API.
//!
//! The binary embeds [`GlobalOpts`] (flattened into its top-level parser) and
//! the subcommand enums [`MachineCmd`], [`TokenCmd`] and [`UserCmd`], then
//! calls [`run_machine`], [`run_token`] or [`run_user`]. On error it prints
//! `anvil: <error>` to stderr and exits with [`CliError::exit_code`]; the
//! codes are a stable interface for scripts, listed in [`error`].
//!
//! Results go to stdout in the format chosen with `--output` (see
//! [`OutputFormat`]); notes for humans go to stderr so they never end up in a
//! pipe.

pub mod error;

mod client;
mod commission;
mod deploy;
mod image;
mod instance;
mod machine;
mod netbox;
mod output;
mod power;
mod rack;
mod secret;
mod token;
mod user;

pub use client::Client;
pub use deploy::{DeployArgs, ReleaseArgs, RescueArgs};
pub use error::CliError;
pub use image::{ImageCmd, ImageImportArgs, run_image};
pub use instance::{InstanceCmd, run_instance};
pub use machine::{
    BmcArgs, MachineAddArgs, MachineCmd, MachineEditArgs, MachineFields, MachineListArgs,
    run_machine,
};
pub use netbox::{NetboxCmd, run_netbox};
pub use output::OutputFormat;
pub use power::{EnrollArgs, PowerCmd, Targets, run_enroll, run_power, run_pxe_boot};
pub use rack::{RackCmd, RackEntry, RackUpArgs, read_manifest, run_rack};
pub use secret::PasswordArgs;
pub use token::{TokenCmd, TokenCreateArgs, print_token_created, run_token};
pub use user::{UserCmd, run_user};

use clap::Args;
use url::Url;

/// Options every client subcommand takes. They are global, so they may
/// appear anywhere on the command line (`anvil machine list -o json`), and
/// are listed under their own heading in `--help`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct GlobalOpts {
    /// Base URL of the Anvil server.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "ANVIL_URL",
        value_name = "URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: Url,
    /// API token. Prefer the environment variable: arguments are visible to
    /// other users in `ps`.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "ANVIL_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Output format.
    #[arg(
        short = 'o',
        long,
        global = true,
        help_heading = "Global options",
        value_enum,
        value_name = "FORMAT",
        default_value_t = OutputFormat::Table
    )]
    pub output: OutputFormat,
}

#[cfg(test)]
mod tests {
    use super::*;
    use anvil_api_types::{Bmc, Interface};
    use anvil_types::{Architecture, BmcDriver, MachineState};
    use clap::{Parser, Subcommand};

    /// The shape the `anvil` binary is expected to have.
    #[derive(Debug, Parser)]
    #[command(name = "anvil")]
    struct TestCli {
        #[command(flatten)]
        global: GlobalOpts,
        #[command(subcommand)]
        cmd: TestCmd,
    }

    #[derive(Debug, Subcommand)]
    enum TestCmd {
        Machine {
            #[command(subcommand)]
            cmd: MachineCmd,
        },
        Token {
            #[command(subcommand)]
            cmd: TokenCmd,
        },
        User {
            #[command(subcommand)]
            cmd: UserCmd,
        },
    }

    fn parse(line: &str) -> Result<TestCli, clap::Error> {
        TestCli::try_parse_from(std::iter::once("anvil").chain(line.split_whitespace()))
    }

    fn machine(line: &str) -> MachineCmd {
        match parse(line).unwrap().cmd {
            TestCmd::Machine { cmd } => cmd,
            other => panic!("not a machine command: {other:?}"),
        }
    }

    fn refused(line: &str) -> clap::error::ErrorKind {
        parse(line).unwrap_err().kind()
    }

    fn opts(token: Option<&str>) -> GlobalOpts {
        GlobalOpts {
            url: "http://127.0.0.1:1".parse().unwrap(),
            token: token.map(str::to_string),
            output: OutputFormat::Table,
        }
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli =
            parse("machine list --url https://anvil.example:8443/ -o json --token t0k").unwrap();
        assert_eq!(cli.global.url.as_str(), "https://anvil.example:8443/");
        assert_eq!(cli.global.token.as_deref(), Some("t0k"));
        assert_eq!(cli.global.output, OutputFormat::Json);
        let cli = parse("--output yaml token list").unwrap();
        assert_eq!(cli.global.output, OutputFormat::Yaml);
        assert!(matches!(
            cli.cmd,
            TestCmd::Token {
                cmd: TokenCmd::List
            }
        ));
        assert_eq!(
            refused("machine list -o xml"),
            clap::error::ErrorKind::InvalidValue
        );
        assert_eq!(
            refused("machine list --url not-a-url"),
            clap::error::ErrorKind::ValueValidation
        );
    }

    #[test]
    fn list_filters() {
        let MachineCmd::List(args) = machine(
            "machine list --state READY --tag gpu --mac 52-54-00-12-34-56 --sort -created_at --limit 50 --offset 100 --all",
        ) else {
            panic!("not list");
        };
        assert_eq!(args.state, Some(MachineState::Ready));
        assert_eq!(args.tag.as_deref(), Some("gpu"));
        assert_eq!(
            args.mac.map(|m| m.to_string()).as_deref(),
            Some("52:54:00:12:34:56")
        );
        assert_eq!(args.sort.as_deref(), Some("-created_at"));
        assert_eq!(args.limit, Some(50));
        assert_eq!(args.offset, Some(100));
        assert!(args.all);

        use clap::error::ErrorKind::{InvalidValue, ValueValidation};
        assert_eq!(refused("machine list --state gone"), InvalidValue);
        assert_eq!(refused("machine list --sort bogus"), ValueValidation);
        assert_eq!(refused("machine list --limit 0"), ValueValidation);
        assert_eq!(refused("machine list --limit 1001"), ValueValidation);
        assert_eq!(
            refused("machine list --mac 01:00:5e:00:00:01"),
            ValueValidation
        );
        assert_eq!(refused("machine show .."), ValueValidation);
    }

    #[test]
    fn add_builds_the_create_body() {
        let MachineCmd::Add(args) = machine(
            "machine add --hostname Node-01 --arch amd64 --tag a --tag b \
             --mac 52:54:00:12:34:56 --mac 5254.0012.3457 \
             --bmc-driver redfish --bmc-address 10.0.1.11 --bmc-verify-tls false \
             --facts {\"rack\":\"r1\"}",
        ) else {
            panic!("not add");
        };
        let body = args.create_body().unwrap();
        assert_eq!(body.hostname, "node-01");
        assert_eq!(body.architecture, Some(Architecture::Amd64));
        assert_eq!(body.tags, ["a", "b"]);
        assert_eq!(body.facts, Some(serde_json::json!({"rack": "r1"})));
        let ifaces: Vec<_> = body
            .interfaces
            .iter()
            .map(|i| (i.mac.as_str(), i.name.as_deref(), i.pxe))
            .collect();
        assert_eq!(
            ifaces,
            [
                ("52:54:00:12:34:56", Some("eth0"), Some(true)),
                ("52:54:00:12:34:57", Some("eth1"), Some(false)),
            ]
        );
        let bmc = body.bmc.unwrap();
        assert_eq!(bmc.driver, BmcDriver::Redfish);
        assert_eq!(bmc.address, "10.0.1.11");
        assert_eq!(bmc.verify_tls, Some(false));
        assert_eq!(bmc.password, None);
    }

    #[test]
    fn add_refuses_bad_input() {
        use clap::error::ErrorKind::*;
        assert_eq!(refused("machine add --arch amd64"), MissingRequiredArgument);
        assert_eq!(refused("machine add --hostname bad_host"), ValueValidation);
        assert_eq!(
            refused("machine add --hostname a --mac zz"),
            ValueValidation
        );
        assert_eq!(
            refused("machine add --hostname a --arch sparc"),
            InvalidValue
        );
        assert_eq!(
            refused("machine add --hostname a --facts [1]"),
            ValueValidation
        );
        // Passwords never travel as arguments.
        assert_eq!(
            refused("machine add --hostname a --bmc-password x"),
            UnknownArgument
        );
        assert_eq!(
            refused("machine add --hostname a --bmc-password-file f --bmc-password-env V"),
            ArgumentConflict
        );

        let MachineCmd::Add(args) =
            machine("machine add --hostname a --mac 52:54:00:12:34:56 --mac 525400123456")
        else {
            panic!("not add");
        };
        let e = args.create_body().unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("given twice"), "{e}");

        let MachineCmd::Add(args) = machine("machine add --hostname a --bmc-address 10.0.0.1")
        else {
            panic!("not add");
        };
        let e = args.create_body().unwrap_err();
        assert_eq!(e.to_string(), "--bmc-driver is needed to add a BMC");
    }

    #[tokio::test]
    async fn local_validation_comes_before_the_token_check() {
        // No token is given: a usage error (2) rather than 5 proves the
        // input was checked first and nothing was sent.
        let add = machine("machine add --hostname a --bmc-port 623");
        assert_eq!(
            run_machine(&opts(None), add).await.unwrap_err().exit_code(),
            2
        );
        let edit = machine("machine edit node-01");
        let e = run_machine(&opts(None), edit).await.unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().starts_with("nothing to change"), "{e}");
        let edit = machine("machine edit node-01 --set-state failed");
        let e = run_machine(&opts(None), edit).await.unwrap_err();
        assert_eq!(e.to_string(), "moving a machine to failed needs --reason");
        let show = machine("machine show node-01");
        assert!(matches!(
            run_machine(&opts(None), show).await,
            Err(CliError::NoToken)
        ));
    }

    #[tokio::test]
    async fn an_unreachable_server_is_exit_code_6() {
        // Port 1 on loopback: nothing listens there, the connection is refused.
        let show = machine("machine show node-01");
        let e = run_machine(&opts(Some("t")), show).await.unwrap_err();
        assert_eq!(e.exit_code(), 6, "{e}");
        assert!(
            e.to_string()
                .starts_with("cannot reach the server at http://127.0.0.1:1/"),
            "{e}"
        );
    }

    #[test]
    fn edit_builds_on_the_current_machine() {
        let MachineCmd::Edit(args) = machine(
            "machine edit node-01 --vendor HPE --tag x \
             --mac 52:54:00:00:00:02 --mac 52:54:00:00:00:09 --bmc-address 10.9.9.9",
        ) else {
            panic!("not edit");
        };
        let mut current = output_sample();
        current.interfaces = vec![
            iface("52:54:00:00:00:01", "eth0", None),
            iface("52:54:00:00:00:02", "eth1", Some("10.0.0.12")),
        ];
        let patch = args.patch(Some(&current), None).unwrap();
        assert_eq!(patch.vendor, Some(Some("HPE".into())));
        assert_eq!(patch.model, None);
        assert_eq!(patch.hostname, None);
        assert_eq!(patch.tags, Some(vec!["x".to_string()]));
        let ifaces: Vec<_> = patch
            .interfaces
            .unwrap()
            .into_iter()
            .map(|i| (i.mac, i.name, i.pxe, i.ipv4))
            .collect();
        assert_eq!(
            ifaces,
            [
                // Kept: same name and reservation, now the PXE interface.
                (
                    "52:54:00:00:00:02".into(),
                    Some("eth1".into()),
                    Some(true),
                    Some("10.0.0.12".into())
                ),
                // New: the first free ethN.
                (
                    "52:54:00:00:00:09".into(),
                    Some("eth0".into()),
                    Some(false),
                    None
                ),
            ]
        );
        // Only the address changes; the rest of the BMC is kept and the
        // password is left out so the server keeps the stored one.
        let bmc = patch.bmc.unwrap().unwrap();
        assert_eq!(bmc.address, "10.9.9.9");
        assert_eq!(bmc.driver, BmcDriver::Redfish);
        assert_eq!(bmc.username.as_deref(), Some("root"));
        assert_eq!(bmc.verify_tls, Some(false));
        assert_eq!(bmc.password, None);

        assert_eq!(
            refused("machine edit node-01 --reason r"),
            clap::error::ErrorKind::MissingRequiredArgument
        );
    }

    #[test]
    fn token_and_user_commands() {
        let cli = parse("token create ci --local --data-dir /var/lib/anvil").unwrap();
        let TestCmd::Token {
            cmd: TokenCmd::Create(args),
        } = cli.cmd
        else {
            panic!("not token create");
        };
        assert_eq!(args.name.as_deref(), Some("ci"));
        assert!(args.local);
        // The bootstrap form automation uses: no name with --local.
        assert!(parse("token create --local --data-dir /d").is_ok());
        assert_eq!(
            refused("token create"),
            clap::error::ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            args.data_dir.as_deref(),
            Some(std::path::Path::new("/var/lib/anvil"))
        );
        assert_eq!(
            refused("token create ci --data-dir /x"),
            clap::error::ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            refused("token revoke not-a-uuid"),
            clap::error::ErrorKind::ValueValidation
        );

        let cli = parse("user add alice --admin --password-env ALICE_PW").unwrap();
        let TestCmd::User {
            cmd:
                UserCmd::Add {
                    username,
                    admin,
                    password,
                },
        } = cli.cmd
        else {
            panic!("not user add");
        };
        assert_eq!(username, "alice");
        assert!(admin);
        assert_eq!(password.password_env.as_deref(), Some("ALICE_PW"));
        assert_eq!(
            refused("user passwd alice --password-file f --password-env V"),
            clap::error::ErrorKind::ArgumentConflict
        );
        assert_eq!(
            refused("user passwd alice --password x"),
            clap::error::ErrorKind::UnknownArgument
        );
    }

    #[tokio::test]
    async fn token_create_local_is_left_to_the_binary() {
        let TestCmd::Token { cmd } = parse("token create ci --local").unwrap().cmd else {
            panic!("not token");
        };
        let e = run_token(&opts(Some("t")), cmd).await.unwrap_err();
        assert_eq!(e.to_string(), "--local is handled by the anvil binary");
        assert_eq!(e.exit_code(), 1);
    }

    fn iface(mac: &str, name: &str, ipv4: Option<&str>) -> Interface {
        Interface {
            id: uuid::Uuid::nil(),
            mac: mac.parse().unwrap(),
            name: name.into(),
            pxe: false,
            ipv4: ipv4.map(str::to_string),
        }
    }

    fn output_sample() -> anvil_api_types::Machine {
        anvil_api_types::Machine {
            id: uuid::Uuid::nil(),
            hostname: "node-01".into(),
            state: MachineState::Ready,
            state_reason: None,
            architecture: None,
            firmware: None,
            vendor: None,
            model: None,
            serial: None,
            tags: vec![],
            facts: serde_json::json!({}),
            interfaces: vec![],
            bmc: Some(Bmc {
                driver: BmcDriver::Redfish,
                address: "10.0.1.11".into(),
                port: None,
                username: Some("root".into()),
                has_password: true,
                verify_tls: false,
            }),
            power_state: None,
            power_checked_at: None,
            created_at: time::OffsetDateTime::UNIX_EPOCH,
            updated_at: time::OffsetDateTime::UNIX_EPOCH,
        }
    }
}
