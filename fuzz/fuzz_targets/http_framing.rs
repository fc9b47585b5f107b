//! The L7 proxy's framing guard, reading a client's byte stream. The first
//! input byte chooses how the rest is cut into reads (as TCP may deliver
//! it); the rest is the stream. However it is cut, the guard refuses the
//! same heads; what hyper reads is the stream unchanged when nothing is
//! refused, else a prefix of it and the poison.

#![no_main]

use axoneme_httpguard::testing::read_through;
use axoneme_httpguard::POISON;
use libfuzzer_sys::fuzz_target;

/// The proxy's head limit is larger; a small one reaches its edge cases.
const MAX_HEAD: usize = 512;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    // Reads of 1 + (cut % 17) bytes, the length rotating by the position.
    let mut pieces = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        let n = (1 + (usize::from(cut) + at) % 17).min(stream.len() - at);
        pieces.push(&stream[at..at + n]);
        at += n;
    }
    let (whole, whole_refused) = read_through(&[stream], MAX_HEAD);
    let (cut_out, cut_refused) = read_through(&pieces, MAX_HEAD);
    assert_eq!(
        whole_refused, cut_refused,
        "the refusals depend on how the stream is cut"
    );
    for (out, refused) in [(&whole, &whole_refused), (&cut_out, &cut_refused)] {
        if refused.is_empty() {
            assert_eq!(out.as_slice(), stream);
        } else {
            assert_eq!(refused.len(), 1, "nothing is read after a refusal");
            let passed = out
                .strip_suffix(POISON)
                .expect("a refused stream ends in the poison");
            assert!(stream.starts_with(passed));
        }
    }
});
