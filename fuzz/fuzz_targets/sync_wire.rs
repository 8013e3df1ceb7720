//! Fuzz target `sync_wire`: the sync protocol's frame decoder and the compressed pull stream
//! (what a unit reads from the network), both directions' messages, fed in input-chosen
//! chunks. Checks: never panics, never buffers more than one maximum frame.
//! `cd fuzz && cargo +nightly fuzz run sync_wire -- -max_total_time=60`
#![no_main]

use edge_proto::sync::frame::FrameDecoder;
use edge_proto::sync::{InflateDeframer, ToHub, ToUnit, MAX_FRAME_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut plain = FrameDecoder::new();
    let mut inflate = InflateDeframer::new();
    for part in stream.chunks(chunk) {
        if plain.push(part).is_ok() {
            while let Ok(Some(_)) = plain.next_message::<ToHub>() {}
        }
        assert!(plain.buffered() <= MAX_FRAME_BYTES + 4 + chunk);
        if inflate.push(part).is_ok() {
            while let Ok(Some(_)) = inflate.next_message::<ToUnit>() {}
        }
    }
});
