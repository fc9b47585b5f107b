//! Sysctls written to `/proc/sys` directly (what `sysctl -w` does, with no
//! process). `/proc/sys/net` shows the namespace of the thread that opens
//! the file, so namespaced keys go through [`Netns::run`].

use std::path::PathBuf;

use crate::{Error, Netns};

/// The file of a dotted key (`net.ipv4.ip_forward`).
fn path_of(key: &str) -> Result<PathBuf, Error> {
    if key.is_empty()
        || key
            .split('.')
            .any(|part| part.is_empty() || part == ".." || part.contains('/'))
    {
        return Err(Error::Invalid(format!("sysctl key {key:?}")));
    }
    Ok(PathBuf::from("/proc/sys").join(key.replace('.', "/")))
}

/// Writes `value` to each key, inside `ns`.
pub fn write(ns: &Netns, settings: &[(&str, &str)]) -> Result<(), Error> {
    let paths = settings
        .iter()
        .map(|(k, v)| Ok((*k, path_of(k)?, *v)))
        .collect::<Result<Vec<_>, Error>>()?;
    ns.run(|| {
        for (key, path, value) in &paths {
            std::fs::write(path, value).map_err(|source| Error::Sysctl {
                key: key.to_string(),
                source,
            })?;
        }
        Ok(())
    })?
}

/// Reads one key inside `ns` (trimmed).
pub fn read(ns: &Netns, key: &str) -> Result<String, Error> {
    let path = path_of(key)?;
    ns.run(|| {
        std::fs::read_to_string(&path)
            .map(|s| s.trim().to_string())
            .map_err(|source| Error::Sysctl {
                key: key.to_string(),
                source,
            })
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_proc_sys() {
        assert_eq!(
            path_of("net.ipv4.tcp_early_demux").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/tcp_early_demux")
        );
        for bad in ["", "net..x", "net/ipv4", "net.ipv4."] {
            assert!(path_of(bad).is_err(), "{bad:?}");
        }
    }
}

/// Against the kernel, in a namespace of its own.
#[cfg(test)]
mod kernel_tests {
    use super::*;
    use crate::testns::TestNs;

    #[test]
    fn written_inside_the_namespace_only() {
        let t = TestNs::new();
        let own = Netns::own().unwrap();
        let before = read(&own, "net.ipv4.tcp_early_demux").unwrap();
        assert_eq!(read(&t.ns, "net.ipv4.tcp_early_demux").unwrap(), "1");
        write(&t.ns, &[("net.ipv4.tcp_early_demux", "0")]).unwrap();
        assert_eq!(read(&t.ns, "net.ipv4.tcp_early_demux").unwrap(), "0");
        assert_eq!(read(&own, "net.ipv4.tcp_early_demux").unwrap(), before);
        let e = write(&t.ns, &[("net.ipv4.no_such_key", "1")]).unwrap_err();
        assert!(matches!(e, Error::Sysctl { .. }), "{e}");
    }
}
