//! Fuzz target `admin_request`: what a caller controls in an admin API request head — the
//! method, headers (Host, Origin, Content-Type, Authorization) and the route — through the
//! hub's pure request checks (`edge_hub::operator::precheck`, `required_role`) and operator
//! token verification (`verify_operator`) of whatever bearer token it carries.
//! Checks: never panics; a request whose Host is not the admin listener, or whose Origin is
//! foreign, is never accepted; an accepted POST always declares a JSON body type.
//! `cd fuzz && cargo +nightly fuzz run admin_request -- -max_total_time=60`
#![no_main]

use edge_hub::operator::{
    allowed_hosts, content_type_ok, host_ok, origin_ok, precheck, required_role,
};
use edge_proto::time::UnixMillis;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Lines: method, route, then "name: value" headers (raw bytes after the colon).
    let mut lines = data.split(|b| *b == b'\n');
    let method = lines
        .next()
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    let route = lines
        .next()
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    let mut headers: Vec<(String, &[u8])> = Vec::new();
    for l in lines.take(32) {
        if let Some(i) = l.iter().position(|b| *b == b':') {
            let name = String::from_utf8_lossy(&l[..i]).trim().to_ascii_lowercase();
            let v = &l[i + 1..];
            let v = v.strip_prefix(b" ").unwrap_or(v);
            headers.push((name, v));
        }
    }
    let pairs: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    let Ok(addr) = "127.0.0.1:8443".parse() else {
        return;
    };
    let allowed = allowed_hosts(addr);
    let _ = required_role(&route);
    if let Ok(head) = precheck(&method, &pairs, &allowed) {
        let get = |name: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        assert!(get("host").is_some_and(|h| host_ok(&h, &allowed)));
        if let Some(o) = get("origin") {
            assert!(origin_ok(&o, &allowed));
        }
        if method.eq_ignore_ascii_case("POST") {
            assert!(get("content-type").is_some_and(|c| content_type_ok(&c)));
        }
        if let Some(t) = head.bearer {
            let _ =
                edge_proto::token::verify_operator(t, &[7u8; 32], UnixMillis(1_800_000_000_000));
        }
    }
});
