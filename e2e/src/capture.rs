//! A packet capture in a namespace (an `AF_PACKET` raw
//! socket, no tcpdump): every frame seen until [`Capture::stop`], for
//! tests that check what crossed a wire (the IPsec test: only ESP between
//! the nodes, no payload in clear).

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{Context, Result};

use crate::netns::Netns;

/// A running capture.
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Vec<u8>>>>,
}

impl Capture {
    /// Starts capturing every frame of every interface of `ns` (a frame
    /// that crosses a bridge is seen on its port and on the bridge).
    pub fn start(ns: &Netns) -> Result<Self> {
        use nix::sys::socket::{
            recv, setsockopt, socket, sockopt::ReceiveTimeout, AddressFamily, MsgFlags, SockFlag,
            SockProtocol, SockType,
        };
        let fd = ns
            .enter(|| {
                socket(
                    AddressFamily::Packet,
                    SockType::Raw,
                    SockFlag::SOCK_CLOEXEC,
                    SockProtocol::EthAll,
                )
            })?
            .context("an AF_PACKET socket")?;
        // Reads wake up every 100 ms to see whether to stop.
        setsockopt(
            &fd,
            ReceiveTimeout,
            &nix::sys::time::TimeVal::new(0, 100_000),
        )?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let mut frames = Vec::new();
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(n) = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                        frames.push(buf[..n].to_vec());
                    }
                }
                frames
            }
        });
        Ok(Capture {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops and returns every frame seen (Ethernet headers included).
    pub fn stop(mut self) -> Result<Vec<Vec<u8>>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .context("stopped twice")?
            .join()
            .map_err(|_| anyhow::anyhow!("the capture thread panicked"))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// An IPv4 frame's protocol, source and destination.
pub fn ipv4_of(frame: &[u8]) -> Option<(u8, std::net::Ipv4Addr, std::net::Ipv4Addr)> {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = |o: usize| std::net::Ipv4Addr::new(frame[o], frame[o + 1], frame[o + 2], frame[o + 3]);
    Some((frame[23], ip(26), ip(30)))
}

/// An IPv6 frame's next header, source and destination.
pub fn ipv6_of(frame: &[u8]) -> Option<(u8, std::net::Ipv6Addr, std::net::Ipv6Addr)> {
    if frame.len() < 54 || frame[12..14] != [0x86, 0xdd] {
        return None;
    }
    let ip = |o: usize| {
        let b: [u8; 16] = frame[o..o + 16].try_into().expect("16 bytes");
        std::net::Ipv6Addr::from(b)
    };
    Some((frame[20], ip(22), ip(38)))
}
