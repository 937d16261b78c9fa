//! Small facts and acts of the running system: uptime, CPU count, the
//! SMBIOS UUID, and power off / reboot by reboot(2).

pub fn uptime() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

pub fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// `/sys/class/dmi/id/product_uuid`, lower case, if the firmware gives one.
pub fn system_uuid() -> Option<String> {
    std::fs::read_to_string("/sys/class/dmi/id/product_uuid")
        .ok()
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
}

/// Syncs and asks the kernel to power off (or reboot). Returns only if the
/// kernel refused (not PID 1 / no CAP_SYS_BOOT).
pub fn power(reboot: bool) -> std::io::Error {
    // SAFETY: sync(2) and reboot(2) take no pointers.
    unsafe {
        libc::sync();
        libc::reboot(if reboot {
            libc::RB_AUTOBOOT
        } else {
            libc::RB_POWER_OFF
        });
    }
    std::io::Error::last_os_error()
}

/// Reaps children that ended (PID 1 inherits every orphan).
pub fn reap_zombies() {
    // SAFETY: waitpid with a null status pointer and WNOHANG.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
}

/// PID 1 must never exit (the kernel would panic): stay up, reaping.
pub fn stay_up() -> ! {
    loop {
        reap_zombies();
        std::thread::sleep(std::time::Duration::from_secs(5));
    }
}
