//! Fuzz target `sync_wire`: the sync protocol's frame decoder and the compressed pull stream
//! (what a unit reads from the network), both directions' messages, fed in input-chosen
//! chunks. Checks: never panics, never buffers more than one maximum frame. Inputs are far
//! smaller than `MAX_FRAME_BYTES`, so a second plain decoder with a small limit
//! (`FrameDecoder::with_max`) is what makes the bound, and the oversized-header path, reachable.
//! `cd fuzz && cargo +nightly fuzz run sync_wire -- -max_total_time=60`
#![no_main]

use edge_proto::sync::frame::FrameDecoder;
use edge_proto::sync::{InflateDeframer, ToHub, ToUnit, MAX_FRAME_BYTES};
use libfuzzer_sys::fuzz_target;

/// The small limit of the second plain decoder (bytes of frame body).
const SMALL_MAX: usize = 64;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut plain = FrameDecoder::new();
    let mut small = FrameDecoder::with_max(SMALL_MAX);
    let mut inflate = InflateDeframer::new();
    for part in stream.chunks(chunk) {
        if plain.push(part).is_ok() {
            while let Ok(Some(_)) = plain.next_message::<ToHub>() {}
        }
        assert!(plain.buffered() <= MAX_FRAME_BYTES + 4 + chunk);
        if small.push(part).is_ok() {
            while let Ok(Some(_)) = small.next_message::<ToHub>() {}
        }
        // At most one incomplete frame (header + body) plus the chunk just pushed.
        assert!(small.buffered() < 4 + SMALL_MAX + chunk);
        if inflate.push(part).is_ok() {
            while let Ok(Some(_)) = inflate.next_message::<ToUnit>() {}
        }
    }
});
