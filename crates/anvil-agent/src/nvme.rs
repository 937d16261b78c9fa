//! NVMe secure erase by the admin passthrough ioctl: Format NVM with Secure
//! Erase Setting 1 (user data erase), keeping the namespace's LBA format,
//! metadata and protection settings as they are. Done here rather than by
//! `nvme-cli`, whose Debian build pulls libnvme-mi, D-Bus, systemd and
//! OpenSSL libraries (7 MB) into the ramdisk for one command.

use std::fs::File;
use std::os::fd::AsRawFd;

/// `struct nvme_passthru_cmd` (linux/nvme_ioctl.h), 72 bytes.
#[repr(C)]
#[derive(Default)]
struct PassthruCmd {
    opcode: u8,
    flags: u8,
    rsvd1: u16,
    nsid: u32,
    cdw2: u32,
    cdw3: u32,
    metadata: u64,
    addr: u64,
    metadata_len: u32,
    data_len: u32,
    cdw10: u32,
    cdw11: u32,
    cdw12: u32,
    cdw13: u32,
    cdw14: u32,
    cdw15: u32,
    timeout_ms: u32,
    result: u32,
}

const _: () = assert!(std::mem::size_of::<PassthruCmd>() == 72);

/// `_IO('N', 0x40)` and `_IOWR('N', 0x41, struct nvme_admin_cmd)`.
const NVME_IOCTL_ID: u64 = 0x4e40;
const NVME_IOCTL_ADMIN_CMD: u64 = 0xc048_4e41;
const OPC_IDENTIFY: u8 = 0x06;
const OPC_FORMAT_NVM: u8 = 0x80;
/// A user data erase of a large drive takes minutes; the kernel's default
/// admin timeout (60 s) would abort it.
const FORMAT_TIMEOUT_MS: u32 = 3_600_000;

/// Command dword 10 of Format NVM for Secure Erase Setting `ses`, keeping
/// the format the Identify Namespace data (`id_ns`, 4096 bytes) reports:
/// LBA format index (FLBAS bits 3:0 and 6:5), metadata setting (FLBAS bit
/// 4), protection type and location (DPS bits 2:0 and 3).
pub fn format_cdw10(id_ns: &[u8], ses: u32) -> u32 {
    let flbas = u32::from(id_ns[26]);
    let dps = u32::from(id_ns[29]);
    let lbaf = (flbas & 0xf) | ((flbas >> 5) & 0x3) << 4;
    (lbaf & 0xf)
        | ((flbas >> 4) & 1) << 4
        | (dps & 0x7) << 5
        | ((dps >> 3) & 1) << 8
        | (ses & 0x7) << 9
        | ((lbaf >> 4) & 0x3) << 12
}

fn admin(f: &File, cmd: &mut PassthruCmd, what: &str) -> Result<(), String> {
    // SAFETY: NVME_IOCTL_ADMIN_CMD reads and writes one PassthruCmd; its
    // addr points at a buffer of data_len bytes that outlives the call.
    let rc = unsafe {
        libc::ioctl(
            f.as_raw_fd(),
            NVME_IOCTL_ADMIN_CMD as _,
            cmd as *mut PassthruCmd,
        )
    };
    match rc {
        0 => Ok(()),
        rc if rc < 0 => Err(format!("NVMe {what}: {}", std::io::Error::last_os_error())),
        status => Err(format!(
            "NVMe {what}: the drive answered status {status:#x} (type {:#x}, code {:#x})",
            (status >> 8) & 0x7,
            status & 0xff
        )),
    }
}

/// Formats the namespace `f` (an open `/dev/nvmeXnY`) with a user data
/// erase.
pub fn format_user_data_erase(f: &File) -> Result<(), String> {
    // SAFETY: NVME_IOCTL_ID takes no argument and returns the namespace id.
    let nsid = unsafe { libc::ioctl(f.as_raw_fd(), NVME_IOCTL_ID as _) };
    if nsid <= 0 {
        return Err(format!(
            "not an NVMe namespace (NVME_IOCTL_ID: {})",
            std::io::Error::last_os_error()
        ));
    }
    let mut id_ns = vec![0u8; 4096];
    let mut identify = PassthruCmd {
        opcode: OPC_IDENTIFY,
        nsid: nsid as u32,
        addr: id_ns.as_mut_ptr() as u64,
        data_len: id_ns.len() as u32,
        cdw10: 0, // CNS 0: Identify Namespace
        ..Default::default()
    };
    admin(f, &mut identify, "Identify Namespace")?;
    let mut format = PassthruCmd {
        opcode: OPC_FORMAT_NVM,
        nsid: nsid as u32,
        cdw10: format_cdw10(&id_ns, 1),
        timeout_ms: FORMAT_TIMEOUT_MS,
        ..Default::default()
    };
    admin(f, &mut format, "Format NVM (user data erase)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_keeps_the_lba_format_and_protection_and_sets_ses() {
        let mut id = vec![0u8; 4096];
        // LBA format 1 (e.g. 4 KiB), no metadata, no protection.
        id[26] = 0x01;
        assert_eq!(format_cdw10(&id, 1), 0x01 | 1 << 9);
        // LBA format 18 = 0b01_0010 (FLBAS 3:0 = 2, 6:5 = 1), metadata at
        // the end of the LBA, protection type 1 first.
        id[26] = 0x02 | 1 << 4 | 1 << 5;
        id[29] = 0x01 | 1 << 3;
        assert_eq!(
            format_cdw10(&id, 1),
            0x2 | 1 << 4 | 1 << 5 | 1 << 8 | 1 << 9 | 1 << 12
        );
    }
}
