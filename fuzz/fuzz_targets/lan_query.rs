//! Fuzz target `lan_query`: what a tablet controls on the LAN — the query string of
//! `/v1/search` and `$summary`, the search parameter rules, and an NHS number in a path.
//! Checks: never panics.
//! `cd fuzz && cargo +nightly fuzz run lan_query -- -max_total_time=60`
#![no_main]

use edge_daemon::lan::query_pairs;
use edge_daemon::search::SearchQuery;
use edge_proto::nhs::NhsNumber;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let pairs = query_pairs(text);
    let _ = SearchQuery::parse_params(&pairs);
    let _ = NhsNumber::parse(text);
});
