//! XFRM states and policies set by hand with `ip xfrm`: the kernel's
//! IPsec alone (the bench's reference paths), and hand-made SAs laid over
//! Axoneme's own on the cluster's nodes.

use anyhow::{ensure, Result};
use axoneme_e2e::netns::Netns;

/// The hand-made SAs' key: 160 bits as Axoneme's (a 128-bit AES key and a
/// 32-bit salt).
const KEY: &str = "0x0123456789abcdef0123456789abcdef01234567";

/// How hand-made SAs are laid: their SPIs (a -> b, b -> a), reqid and
/// outbound policy priority, and whether inbound policies come with them.
struct Lay {
    spis: [u32; 2],
    reqid: &'static str,
    priority: &'static str,
    inbound: bool,
}

/// The kernel's IPsec alone: what `ip xfrm` makes with defaults.
const ALONE: Lay = Lay {
    spis: [0x10, 0x11],
    reqid: "7",
    priority: "0",
    inbound: true,
};

/// Over Axoneme's own layout, left in place: unmarked states and an
/// unmarked outbound policy that wins over Axoneme's (a lower priority
/// number), with Axoneme's reqid so that its inbound policies accept what
/// they decrypt. Only the marks and Axoneme's choice of SA differ from the
/// axoneme path.
const OVER_AXONEME: Lay = Lay {
    spis: [0x20, 0x21],
    // The agent's `encrypt::desired::REQID`.
    reqid: "0xa0e5",
    priority: "10",
    inbound: false,
};

/// The twin pods' (twin.rs) beside Axoneme's own on the cluster's nodes:
/// states, outbound and inbound policies of their own (Axoneme's match
/// neither their addresses nor their reqid, and the agents leave states
/// of another reqid alone).
const TWIN: Lay = Lay {
    spis: [0x30, 0x31],
    reqid: "8",
    priority: "0",
    inbound: true,
};

/// Two nodes: `a` at `ips.0` routes `nets.0`, `b` at `ips.1` routes
/// `nets.1`.
pub struct Pair<'a> {
    pub a: &'a Netns,
    pub b: &'a Netns,
    pub ips: (&'a str, &'a str),
    pub nets: (&'a str, &'a str),
}

impl Pair<'_> {
    /// ESP tunnel states and policies set by hand with `ip xfrm` between
    /// the two nodes (`on`), or none.
    pub fn hand_xfrm(&self, on: bool) -> Result<()> {
        for ns in [self.a, self.b] {
            ns.ip(&["xfrm", "state", "flush"])?;
            ns.ip(&["xfrm", "policy", "flush"])?;
        }
        if on {
            self.add(&ALONE)?;
        }
        Ok(())
    }

    /// Checks that the states of the hand-made IPsec ([`Self::hand_xfrm`])
    /// carried packets.
    pub fn check_hand_carried(&self) -> Result<()> {
        self.check_carried(&ALONE)
    }

    /// [`OVER_AXONEME`] added (`on`) or taken away again, Axoneme's own
    /// states and policies untouched; taking it away checks first that its
    /// states carried packets (what was measured went through them).
    pub fn over_axoneme(&self, on: bool) -> Result<()> {
        self.toggle(&OVER_AXONEME, on)
    }

    /// [`TWIN`] added (`on`) or taken away again, checking first that its
    /// states carried packets; nothing else touched.
    pub fn twin(&self, on: bool) -> Result<()> {
        self.toggle(&TWIN, on)
    }

    /// Adds `lay` (`on`), or checks that it carried packets and deletes
    /// its states and policies alone.
    fn toggle(&self, lay: &Lay, on: bool) -> Result<()> {
        if on {
            return self.add(lay);
        }
        let carried = self.check_carried(lay);
        let (ips, nets) = (self.ips, self.nets);
        for (ns, mine, theirs) in [(self.a, nets.0, nets.1), (self.b, nets.1, nets.0)] {
            let dirs: &[(&str, &str, &str)] = if lay.inbound {
                &[
                    (mine, theirs, "out"),
                    (theirs, mine, "fwd"),
                    (theirs, mine, "in"),
                ]
            } else {
                &[(mine, theirs, "out")]
            };
            for (src, dst, dir) in dirs {
                ns.ip(&[
                    "xfrm", "policy", "delete", "src", src, "dst", dst, "dir", dir,
                ])?;
            }
            for (src, dst, spi) in [(ips.0, ips.1, lay.spis[0]), (ips.1, ips.0, lay.spis[1])] {
                let spi = format!("{spi:#x}");
                ns.ip(&[
                    "xfrm", "state", "delete", "src", src, "dst", dst, "proto", "esp", "spi", &spi,
                ])?;
            }
        }
        carried
    }

    /// Node `a`'s states of `lay` counted packets (`ip -s xfrm state`).
    fn check_carried(&self, lay: &Lay) -> Result<()> {
        let out = self.a.ip(&["-s", "xfrm", "state"])?;
        let listing = String::from_utf8_lossy(&out.stdout);
        for spi in lay.spis {
            let id = format!("spi 0x{spi:08x}");
            let carried = listing
                .split("\nsrc ")
                .find(|block| block.contains(&id))
                .is_some_and(|b| b.contains("(packets)") && !b.contains(" 0(packets)"));
            ensure!(
                carried,
                "the hand-made state {spi:#x} carried nothing:\n{listing}"
            );
        }
        Ok(())
    }

    /// Adds `lay`'s states and policies on both nodes.
    fn add(&self, lay: &Lay) -> Result<()> {
        let (ips, nets) = (self.ips, self.nets);
        for (ns, me, peer, mine, theirs) in [
            (self.a, ips.0, ips.1, nets.0, nets.1),
            (self.b, ips.1, ips.0, nets.1, nets.0),
        ] {
            // The same two SAs on both nodes: a -> b and b -> a.
            for (src, dst, spi) in [(ips.0, ips.1, lay.spis[0]), (ips.1, ips.0, lay.spis[1])] {
                let spi = format!("{spi:#x}");
                ns.ip(&[
                    "xfrm",
                    "state",
                    "add",
                    "src",
                    src,
                    "dst",
                    dst,
                    "proto",
                    "esp",
                    "spi",
                    &spi,
                    "reqid",
                    lay.reqid,
                    "mode",
                    "tunnel",
                    "aead",
                    "rfc4106(gcm(aes))",
                    KEY,
                    "128",
                ])?;
            }
            ns.ip(&[
                "xfrm",
                "policy",
                "add",
                "src",
                mine,
                "dst",
                theirs,
                "dir",
                "out",
                "priority",
                lay.priority,
                "tmpl",
                "src",
                me,
                "dst",
                peer,
                "proto",
                "esp",
                "reqid",
                lay.reqid,
                "mode",
                "tunnel",
            ])?;
            if !lay.inbound {
                continue;
            }
            for dir in ["fwd", "in"] {
                ns.ip(&[
                    "xfrm", "policy", "add", "src", theirs, "dst", mine, "dir", dir, "tmpl", "src",
                    peer, "dst", me, "proto", "esp", "reqid", lay.reqid, "mode", "tunnel",
                ])?;
            }
        }
        Ok(())
    }
}
