//! The boot decision, as pure code.
//!
//! Given what Anvil knows of a MAC (nothing, or a machine and its lifecycle
//! state), `decide` picks the stage to boot, and `render` turns the stage's
//! iPXE template into the script served at `/boot/<mac>.ipxe`. Templates are
//! compiled in (`ipxe/` at the repository root) and an operator may override
//! any of them; reading the override from disk is the caller's job, so this
//! crate stays free of I/O and testable with plain values.

use anvil_types::{MacAddr, MachineState};
use uuid::Uuid;

/// What a machine boots next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Unknown MAC: the discovery ramdisk, which calls home.
    Discovery,
    /// Boot the local disk.
    Local,
    Commissioning,
    Deploying,
    Releasing,
    Rescue,
}

impl Stage {
    /// Template file name in `ipxe/` (and in `<data_dir>/ipxe/` for overrides).
    pub fn template_name(self) -> &'static str {
        match self {
            Stage::Discovery => "discovery.ipxe",
            Stage::Local => "local.ipxe",
            Stage::Commissioning => "commissioning.ipxe",
            Stage::Deploying => "deploying.ipxe",
            Stage::Releasing => "releasing.ipxe",
            Stage::Rescue => "rescue.ipxe",
        }
    }

    /// Directory under `<data_dir>/boot/` holding this stage's kernel and
    /// ramdisk, served at `/boot/files/<dir>/`. `None` for local boot. Every
    /// stage that runs the agent boots the same agent ramdisk (the run's
    /// purpose, told at registration, decides what it does), kept where
    /// commissioning always found it.
    pub fn files_dir(self) -> Option<&'static str> {
        match self {
            Stage::Discovery => Some("discovery"),
            Stage::Local => None,
            Stage::Commissioning | Stage::Deploying | Stage::Releasing | Stage::Rescue => {
                Some("commissioning")
            }
        }
    }

    /// Whether this stage boots the agent, which needs a per-boot token.
    pub fn runs_agent(self) -> bool {
        matches!(
            self,
            Stage::Commissioning | Stage::Deploying | Stage::Releasing | Stage::Rescue
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Discovery => "discovery",
            Stage::Local => "local",
            Stage::Commissioning => "commissioning",
            Stage::Deploying => "deploying",
            Stage::Releasing => "releasing",
            Stage::Rescue => "rescue",
        }
    }
}

/// The built-in template of a stage.
pub fn builtin_template(stage: Stage) -> &'static str {
    match stage {
        Stage::Discovery => include_str!("../../../ipxe/discovery.ipxe"),
        Stage::Local => include_str!("../../../ipxe/local.ipxe"),
        Stage::Commissioning => include_str!("../../../ipxe/commissioning.ipxe"),
        Stage::Deploying => include_str!("../../../ipxe/deploying.ipxe"),
        Stage::Releasing => include_str!("../../../ipxe/releasing.ipxe"),
        Stage::Rescue => include_str!("../../../ipxe/rescue.ipxe"),
    }
}

/// What the boot decision needs to know of a known machine.
#[derive(Debug, Clone, PartialEq)]
pub struct KnownMachine {
    pub id: Uuid,
    pub hostname: String,
    pub state: MachineState,
}

/// The stage for a MAC: its machine's lifecycle state decides; an unknown
/// MAC, or a `new` machine (known by its BMC or its first DHCP request, not
/// yet described), boots the discovery environment, as MAAS enlists. The
/// states with an agent run (commissioning, deploying, releasing, rescue)
/// boot the agent ramdisk. States with nothing to run boot the local disk,
/// so a deployed server, whose boot order has the network first, comes up
/// from the disk Anvil wrote.
pub fn decide(machine: Option<&KnownMachine>) -> Stage {
    match machine.map(|m| m.state) {
        None | Some(MachineState::New) => Stage::Discovery,
        Some(MachineState::Commissioning) => Stage::Commissioning,
        Some(MachineState::Deploying) => Stage::Deploying,
        Some(MachineState::Releasing) => Stage::Releasing,
        Some(MachineState::Rescue) => Stage::Rescue,
        Some(
            MachineState::Ready
            | MachineState::Allocated
            | MachineState::Deployed
            | MachineState::Broken
            | MachineState::Failed,
        ) => Stage::Local,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("the iPXE template {name} is not valid")]
    Template {
        name: &'static str,
        #[source]
        source: minijinja::Error,
    },
}

/// Renders the script for `mac` at `stage`. `template` is the operator's
/// override if one exists, else `builtin_template(stage)`. `server_url` is
/// Anvil's HTTP base URL as the client reached it (no trailing slash).
pub fn render(
    stage: Stage,
    template: &str,
    server_url: &str,
    mac: MacAddr,
    machine: Option<&KnownMachine>,
) -> Result<String, BootError> {
    render_with_token(stage, template, server_url, mac, machine, None)
}

/// `render`, with the per-boot agent token for stages that run the agent
/// (`anvil.token=…` on the kernel command line, `agent_token` in templates).
/// The token is minted by the caller for this one boot; it is URL-safe
/// base64, so it needs no quoting on a command line.
pub fn render_with_token(
    stage: Stage,
    template: &str,
    server_url: &str,
    mac: MacAddr,
    machine: Option<&KnownMachine>,
    agent_token: Option<&str>,
) -> Result<String, BootError> {
    let server_url = server_url.trim_end_matches('/');
    let dir = stage.files_dir().unwrap_or("discovery");
    let mac_s = mac.to_string();
    let mac_q = mac_s.clone();
    let mac_dashed = mac_s.replace(':', "-");
    // BOOTIF tells the ramdisk which interface it booted from (pxelinux's
    // convention, which Debian's initramfs and our agent understand).
    let mut cmdline = format!(
        "anvil.url={server_url} anvil.mac={mac_s} BOOTIF=01-{mac_dashed} console=tty0 console=ttyS0,115200"
    );
    // Only a token that cannot break the command line is passed on.
    let agent_token = agent_token.filter(|t| {
        !t.is_empty()
            && t.len() <= 128
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if let Some(t) = agent_token {
        cmdline.push_str(" anvil.token=");
        cmdline.push_str(t);
    }
    let hostname = machine.map(|m| m.hostname.clone()).unwrap_or_default();
    let machine_id = machine.map(|m| m.id.to_string()).unwrap_or_default();
    let state = machine.map(|m| m.state.as_str()).unwrap_or("");
    let vars = minijinja::context! {
        server_url => server_url,
        mac => mac_s,
        mac_dashed => mac_dashed,
        hostname => hostname,
        machine_id => machine_id,
        state => state,
        // ?mac= lets the HTTP server put the fetch on this machine's timeline.
        kernel_url => format!("{server_url}/boot/files/{dir}/vmlinuz?mac={mac_q}"),
        initrd_url => format!("{server_url}/boot/files/{dir}/initrd.img?mac={mac_q}"),
        cmdline => cmdline,
        agent_token => agent_token.unwrap_or(""),
    };
    let name = stage.template_name();
    let mut env = minijinja::Environment::new();
    // iPXE scripts are plain text: no HTML escaping, keep the final newline.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .build()
    {
        env.set_syntax(syntax);
    }
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.add_template(name, template)
        .map_err(|source| BootError::Template { name, source })?;
    let tmpl = env
        .get_template(name)
        .map_err(|source| BootError::Template { name, source })?;
    tmpl.render(vars)
        .map_err(|source| BootError::Template { name, source })
}

/// A MAC from the `/boot/<mac>.ipxe` path segment (`:` or `-` separated).
pub fn mac_from_script_name(segment: &str) -> Option<MacAddr> {
    segment.strip_suffix(".ipxe")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commissioning_scripts_carry_the_agent_token() {
        let m = KnownMachine {
            id: Uuid::nil(),
            hostname: "node-1".into(),
            state: MachineState::Commissioning,
        };
        let mac = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        let stage = decide(Some(&m));
        let script = render_with_token(
            stage,
            builtin_template(stage),
            "http://10.77.0.1:8080/",
            mac,
            Some(&m),
            Some("AbC-_123"),
        )
        .unwrap();
        let kernel = script.lines().find(|l| l.starts_with("kernel ")).unwrap();
        assert!(
            kernel.contains(
                "anvil.url=http://10.77.0.1:8080 anvil.mac=52:54:00:12:34:56 BOOTIF=01-52-54-00-12-34-56"
            ),
            "{kernel}"
        );
        assert!(
            kernel.contains(" console=ttyS0,115200 anvil.token=AbC-_123 "),
            "{kernel}"
        );
        // A token that could break the command line is dropped, not passed.
        let script = render_with_token(
            stage,
            builtin_template(stage),
            "http://a",
            mac,
            Some(&m),
            Some("x y"),
        )
        .unwrap();
        assert!(!script.contains("anvil.token"), "{script}");
        let plain = render(stage, builtin_template(stage), "http://a", mac, Some(&m)).unwrap();
        assert!(!plain.contains("anvil.token"));
    }

    fn m(state: MachineState) -> KnownMachine {
        KnownMachine {
            id: Uuid::nil(),
            hostname: "node-1".into(),
            state,
        }
    }

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);

    #[test]
    fn decision_follows_the_lifecycle() {
        assert_eq!(decide(None), Stage::Discovery);
        assert_eq!(
            decide(Some(&m(MachineState::Commissioning))),
            Stage::Commissioning
        );
        assert_eq!(decide(Some(&m(MachineState::Deploying))), Stage::Deploying);
        assert_eq!(decide(Some(&m(MachineState::Releasing))), Stage::Releasing);
        assert_eq!(decide(Some(&m(MachineState::Rescue))), Stage::Rescue);
        assert_eq!(decide(Some(&m(MachineState::New))), Stage::Discovery);
        for s in [
            MachineState::Ready,
            MachineState::Deployed,
            MachineState::Broken,
        ] {
            assert_eq!(decide(Some(&m(s))), Stage::Local, "{s}");
        }
    }

    #[test]
    fn discovery_script_boots_the_ramdisk_with_call_home_arguments() {
        let s = render(
            Stage::Discovery,
            builtin_template(Stage::Discovery),
            "http://10.77.0.1:8080/",
            MAC,
            None,
        )
        .unwrap();
        assert!(s.starts_with("#!ipxe\n"), "{s}");
        assert!(s.contains("kernel http://10.77.0.1:8080/boot/files/discovery/vmlinuz?mac=52:54:00:12:34:56 initrd=initrd.img anvil.url=http://10.77.0.1:8080 anvil.mac=52:54:00:12:34:56 BOOTIF=01-52-54-00-12-34-56"), "{s}");
        assert!(s.contains("initrd --name initrd.img http://10.77.0.1:8080/boot/files/discovery/initrd.img?mac=52:54:00:12:34:56"), "{s}");
        assert!(s.ends_with('\n'));
    }

    #[test]
    fn every_builtin_template_renders_for_every_stage() {
        for stage in [
            Stage::Discovery,
            Stage::Local,
            Stage::Commissioning,
            Stage::Deploying,
            Stage::Releasing,
            Stage::Rescue,
        ] {
            let machine = m(MachineState::Ready);
            let s = render(
                stage,
                builtin_template(stage),
                "http://a:1",
                MAC,
                Some(&machine),
            )
            .unwrap();
            assert!(s.starts_with("#!ipxe"), "{stage:?}");
        }
        let local = render(
            Stage::Local,
            builtin_template(Stage::Local),
            "http://a:1",
            MAC,
            Some(&m(MachineState::Deployed)),
        )
        .unwrap();
        assert!(local.contains("sanboot") && local.contains("exit"));
        assert!(local.contains("node-1 is deployed"));
    }

    #[test]
    fn deploying_releasing_and_rescue_boot_the_agent_with_its_token() {
        for state in [
            MachineState::Deploying,
            MachineState::Releasing,
            MachineState::Rescue,
        ] {
            let machine = m(state);
            let stage = decide(Some(&machine));
            assert!(stage.runs_agent(), "{state}");
            let s = render_with_token(
                stage,
                builtin_template(stage),
                "http://10.77.0.1:8080",
                MAC,
                Some(&machine),
                Some("tok_EN-1"),
            )
            .unwrap();
            // The same agent ramdisk as commissioning, with the token.
            let kernel = s.lines().find(|l| l.starts_with("kernel ")).unwrap();
            assert!(
                kernel.starts_with(
                    "kernel http://10.77.0.1:8080/boot/files/commissioning/vmlinuz?mac=52:54:00:12:34:56 "
                ),
                "{state}: {kernel}"
            );
            assert!(
                kernel.contains(" anvil.token=tok_EN-1 "),
                "{state}: {kernel}"
            );
            assert!(s.contains("initrd --name initrd.img http://10.77.0.1:8080/boot/files/commissioning/initrd.img"), "{s}");
            assert!(!s.contains("sanboot"), "{state}");
        }
        assert!(!Stage::Local.runs_agent() && !Stage::Discovery.runs_agent());
    }

    #[test]
    fn a_deployed_machine_boots_its_disk_bios_by_sanboot_uefi_by_exit() {
        let machine = m(MachineState::Deployed);
        let stage = decide(Some(&machine));
        assert_eq!(stage, Stage::Local);
        let s = render(
            stage,
            builtin_template(stage),
            "http://a:1",
            MAC,
            Some(&machine),
        )
        .unwrap();
        let lines: Vec<&str> = s.lines().map(str::trim).collect();
        // UEFI leaves iPXE (the firmware goes on to the disk's boot entry)
        // before BIOS would try the first hard disk.
        let efi_check = lines
            .iter()
            .position(|l| *l == "iseq ${platform} efi && goto efi ||")
            .expect("platform check");
        let sanboot = lines
            .iter()
            .position(|l| l.starts_with("sanboot --no-describe --drive 0x80"))
            .expect("BIOS sanboot");
        let efi_label = lines.iter().position(|l| *l == ":efi").expect(":efi");
        assert!(efi_check < sanboot && sanboot < efi_label, "{s}");
        assert_eq!(
            lines[efi_label + 1..].iter().find(|l| !l.starts_with('#')),
            Some(&"exit"),
            "{s}"
        );
        // No agent, no kernel: nothing is booted from the network.
        assert!(!s.contains("kernel ") && !s.contains("anvil.token"), "{s}");
    }

    #[test]
    fn overrides_are_rendered_and_bad_ones_reported() {
        let s = render(
            Stage::Local,
            "#!ipxe\necho {{ hostname }} <{{ state }}>\n",
            "http://a:1",
            MAC,
            Some(&m(MachineState::Ready)),
        )
        .unwrap();
        assert_eq!(s, "#!ipxe\necho node-1 <ready>\n");
        assert!(
            render(
                Stage::Local,
                "#!ipxe\n{{ nosuchvar }}\n",
                "http://a:1",
                MAC,
                None
            )
            .is_err()
        );
        assert!(render(Stage::Local, "#!ipxe\n{% if %}\n", "http://a:1", MAC, None).is_err());
    }

    #[test]
    fn script_names() {
        assert_eq!(mac_from_script_name("52-54-00-12-34-56.ipxe"), Some(MAC));
        assert_eq!(mac_from_script_name("52:54:00:12:34:56.ipxe"), Some(MAC));
        assert_eq!(mac_from_script_name("52:54:00:12:34:56"), None);
        assert_eq!(mac_from_script_name("../etc.ipxe"), None);
    }
}
