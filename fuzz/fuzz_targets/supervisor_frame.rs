//! Fuzz target `supervisor_frame`: the supervisor link's streaming frame decoder, both
//! directions, fed in chunks whose size the input chooses.
//!
//! Checks, beyond "never panics": the decoder's buffer stays bounded, and every frame that
//! decodes re-encodes to exactly the bytes it came from. Run with (nightly + cargo-fuzz):
//! `cd fuzz && cargo +nightly fuzz run supervisor_frame -- -max_total_time=60`.
#![no_main]

use firmware::proto::frame::{decode, encode, FrameDecoder};
use firmware::proto::{HostToMcu, McuToHost, Message, MAX_ENCODED_LEN};
use libfuzzer_sys::fuzz_target;

fn canonical<M: Message>(segment: &[u8]) {
    if let Ok(frame) = decode::<M>(segment) {
        let wire = encode(frame.seq, &frame.msg);
        assert_eq!(
            &wire[..wire.len() - 1],
            segment,
            "non-canonical frame accepted"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut to_mcu = FrameDecoder::<HostToMcu>::new();
    let mut to_host = FrameDecoder::<McuToHost>::new();
    for piece in stream.chunks(chunk) {
        for frame in to_mcu.feed(piece).flatten() {
            let _ = encode(frame.seq, &frame.msg);
        }
        for frame in to_host.feed(piece).flatten() {
            let _ = encode(frame.seq, &frame.msg);
        }
        assert!(to_mcu.buffered() <= MAX_ENCODED_LEN);
        assert!(to_host.buffered() <= MAX_ENCODED_LEN);
    }
    for segment in stream.split(|&b| b == 0) {
        canonical::<HostToMcu>(segment);
        canonical::<McuToHost>(segment);
    }
});
