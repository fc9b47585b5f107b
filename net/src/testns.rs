//! Test namespaces: `axnet-<pid>-<n>`, made with `ip netns add` (tests
//! only) and deleted on drop; `AXONEME_KEEP_NETNS=1` keeps them to look at.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::Netns;

pub(crate) struct TestNs {
    pub name: String,
    pub ns: Netns,
}

impl TestNs {
    pub fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "axnet-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip netns add")
            .success();
        assert!(ok, "ip netns add {name}");
        let ns = Netns::open(format!("/run/netns/{name}")).expect("open the test namespace");
        TestNs { name, ns }
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        if std::env::var_os("AXONEME_KEEP_NETNS").is_none() {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
        }
    }
}
