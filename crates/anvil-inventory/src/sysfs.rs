//! Reading sysfs/procfs-shaped files below a root directory, softly: a
//! missing file is normal (it becomes `None`), any other failure is noted
//! as a problem and also becomes `None`.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// A root directory (normally "/") and the soft problems met below it.
pub(crate) struct Tree<'a> {
    root: &'a Path,
    pub(crate) problems: Vec<String>,
}

impl<'a> Tree<'a> {
    pub(crate) fn new(root: &'a Path) -> Self {
        Tree {
            root,
            problems: Vec::new(),
        }
    }

    /// `rel` below the root; `rel` is written as an absolute path ("/sys/...").
    pub(crate) fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        let rel = rel.as_ref();
        self.root.join(rel.strip_prefix("/").unwrap_or(rel))
    }

    /// The path as it would be seen on the machine, for messages.
    fn shown(&self, path: &Path) -> String {
        match path.strip_prefix(self.root) {
            Ok(rel) => format!("/{}", rel.display()),
            Err(_) => path.display().to_string(),
        }
    }

    pub(crate) fn note(&mut self, path: &Path, what: impl std::fmt::Display) {
        // Bounded, like everything in a report (see HardwareFacts::validate).
        const MAX_NOTED: usize = 500;
        if self.problems.len() < MAX_NOTED {
            let mut line = format!("{}: {what}", self.shown(path));
            if line.len() > 1024 {
                let mut cut = 1024;
                while !line.is_char_boundary(cut) {
                    cut -= 1;
                }
                line.truncate(cut);
            }
            self.problems.push(line);
        } else if self.problems.len() == MAX_NOTED {
            self.problems
                .push("further problems not listed".to_string());
        }
    }

    /// Raw bytes of a file; `None` if it does not exist or cannot be read.
    pub(crate) fn bytes_at(&mut self, path: &Path) -> Option<Vec<u8>> {
        match std::fs::read(path) {
            Ok(b) => Some(b),
            Err(e) if is_absent(&e) => None,
            Err(e) => {
                self.note(path, format_args!("unreadable: {e}"));
                None
            }
        }
    }

    pub(crate) fn bytes(&mut self, rel: impl AsRef<Path>) -> Option<Vec<u8>> {
        let p = self.path(rel);
        self.bytes_at(&p)
    }

    /// A text file, whitespace-trimmed; `None` if absent, unreadable or empty.
    pub(crate) fn text_at(&mut self, path: &Path) -> Option<String> {
        let bytes = self.bytes_at(path)?;
        let s = String::from_utf8_lossy(&bytes);
        let t = s.trim_matches(|c: char| c.is_whitespace() || c == '\0');
        (!t.is_empty()).then(|| t.to_string())
    }

    pub(crate) fn text(&mut self, rel: impl AsRef<Path>) -> Option<String> {
        let p = self.path(rel);
        self.text_at(&p)
    }

    /// A number in a text file; a value that does not parse is a problem.
    pub(crate) fn number_at<T: std::str::FromStr>(&mut self, path: &Path) -> Option<T> {
        let t = self.text_at(path)?;
        match t.parse() {
            Ok(n) => Some(n),
            Err(_) => {
                self.note(path, format_args!("not a number: {t:?}"));
                None
            }
        }
    }

    /// "0"/"1" files.
    pub(crate) fn flag_at(&mut self, path: &Path) -> Option<bool> {
        self.number_at::<u8>(path).map(|n| n != 0)
    }

    /// Names of the entries of a directory, sorted; empty if it does not exist.
    pub(crate) fn list(&mut self, rel: impl AsRef<Path>) -> Vec<String> {
        let dir = self.path(rel);
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                let mut names: Vec<String> = entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort_by(|a, b| natural_cmp(a, b));
                names
            }
            Err(e) if is_absent(&e) => Vec::new(),
            Err(e) => {
                self.note(&dir, format_args!("unlistable: {e}"));
                Vec::new()
            }
        }
    }

    /// Where a symlink below the root finally points, as a path below the
    /// root ("/sys/devices/..."), or `None` if it is not there.
    pub(crate) fn resolve(&self, path: &Path) -> Option<PathBuf> {
        let real = std::fs::canonicalize(path).ok()?;
        let root = std::fs::canonicalize(self.root).ok()?;
        let rel = real.strip_prefix(&root).ok()?;
        Some(Path::new("/").join(rel))
    }

    /// The last path component a symlink points to (a driver's name).
    pub(crate) fn link_name(&self, path: &Path) -> Option<String> {
        let target = std::fs::read_link(path).ok()?;
        Some(target.file_name()?.to_string_lossy().into_owned())
    }
}

fn is_absent(e: &std::io::Error) -> bool {
    // sysfs answers EINVAL/ENODEV for attributes that do not apply right now
    // (speed of a link that is down, carrier of an interface that is down).
    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory)
        || matches!(
            e.raw_os_error(),
            Some(libc::EINVAL) | Some(libc::ENODEV) | Some(libc::ENXIO)
        )
}

/// Compare names with their numbers as numbers: "cpu2" < "cpu10",
/// "eth2" < "eth10", "nvme0n2" < "nvme0n10".
pub(crate) fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    for (x, y) in chunks(a).into_iter().zip(chunks(b)) {
        let ord = match (x, y) {
            ((true, x), (true, y)) => {
                let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                x.len().cmp(&y.len()).then_with(|| x.cmp(y))
            }
            ((_, x), (_, y)) => x.cmp(y),
        };
        if ord.is_ne() {
            return ord;
        }
    }
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// A PCI address "dddd:bb:dd.f".
pub(crate) fn is_pci_address(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && b.iter()
            .enumerate()
            .all(|(i, c)| matches!(i, 4 | 7 | 10) || c.is_ascii_hexdigit())
}

/// The PCI device closest to the end of a sysfs device path.
pub(crate) fn pci_address_of(device_path: &Path) -> Option<String> {
    device_path
        .components()
        .filter_map(|c| c.as_os_str().to_str())
        .rfind(|c| is_pci_address(c))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order_and_pci_addresses() {
        let mut names = vec![
            "cpu10", "cpu2", "cpufreq", "cpu1", "nvme0n1", "eth10", "eth2", "sda",
        ];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            names,
            [
                "cpu1", "cpu2", "cpu10", "cpufreq", "eth2", "eth10", "nvme0n1", "sda"
            ]
        );
        assert!(is_pci_address("0000:3b:00.0"));
        assert!(!is_pci_address("0000:3b:00"));
        assert!(!is_pci_address("pci0000:00"));
        assert_eq!(
            pci_address_of(Path::new(
                "/sys/devices/pci0000:00/0000:00:1c.0/0000:3b:00.0/net/eno1"
            )),
            Some("0000:3b:00.0".into())
        );
    }
}
