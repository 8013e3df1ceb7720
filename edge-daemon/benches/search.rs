//! Demographic search on the unit's cache as it really runs: the postings on disk, candidates
//! read back from the value log and opened. Builds a cache of N synthetic summaries through
//! `Cache::apply` (the sync path: a baseline, as a new unit's cold fill), then times searches.
//!
//! `cargo bench -p edge-daemon --bench search [-- PATIENTS]` (default 100,000). Prints a
//! Markdown table for BENCHMARKS.md. `CHURN=n` then applies n updates as live-feed batches
//! (past 65,536, sled's changes are merged into a new record index file).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_daemon::cache::Cache;
use edge_daemon::seal::{KeyState, Sealer};
use edge_daemon::search::SearchQuery;
use edge_proto::fhir::ingest::parse_bundle_json;
use edge_proto::model::Demographics;
use edge_proto::sync::{Apply, ApplyKind, Bytes, Change, SyncState};
use edge_proto::time::UnixMillis;
use edge_proto::{assemble, cbor};

/// The daemon's allocator (src/main.rs), so the figures are the daemon's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn peak_rss_mib() -> u64 {
    rss_mib("VmHWM:")
}

/// A `/proc/self/status` memory line (`VmRSS:`, `VmHWM:`) in MiB.
fn rss_mib(line: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(line))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        / 1024
}

fn time_queries(cache: &Cache, qs: &[SearchQuery]) -> (Duration, Duration, Duration, usize) {
    let mut t = Vec::with_capacity(qs.len());
    let mut found = 0;
    for q in qs {
        let s = Instant::now();
        let out = cache.search(q).map_err(|_| "search failed").unwrap();
        t.push(s.elapsed());
        found += usize::from(!out.candidates.is_empty());
    }
    t.sort();
    (pct(&t, 0.5), pct(&t, 0.99), t[t.len() - 1], found)
}

/// Patient `i` of the synthetic population as an upsert at `seq` and `version`, with its
/// demographics.
fn upsert(
    gen: &kerbside_synth::Generator,
    line: &mut String,
    i: u64,
    seq: u64,
    version: u64,
) -> (Change, Demographics) {
    line.clear();
    gen.patient(i, line);
    let c = parse_bundle_json(line.trim_end()).unwrap();
    let s = assemble::from_contribution(&c, UnixMillis(0));
    let change = Change::Upsert {
        seq,
        nhs: s.nhs_number,
        version,
        record: Bytes::from(cbor::encode_summary(&s).unwrap()),
    };
    (change, s.patient)
}

/// Apply one step of `changes` ending at `seq` (the cursor), timed.
fn step(cache: &Cache, kind: ApplyKind, seq: u64, changes: Vec<Change>, now: i64) -> Duration {
    let apply = Apply {
        batch_no: seq,
        kind,
        epoch: 1,
        changes,
        // The store hashes each record once, as the daemon's session does while verifying.
        record_digests: Vec::new(),
        state: SyncState {
            cursor: seq,
            ..SyncState::default()
        },
    };
    let a = Instant::now();
    cache.apply(&apply, UnixMillis(now)).unwrap();
    a.elapsed()
}

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let sealer = Arc::new(Sealer::ephemeral().unwrap());
    let (cache, _) = Cache::open(dir.path(), sealer, KeyState::Fresh).unwrap();
    let cfg = kerbside_synth::Config::new(n, 5, 1, None).unwrap();
    let gen = kerbside_synth::Generator::new(&cfg);
    // Keep one in 50 patients' demographics for the queries.
    let mut sample: Vec<Demographics> = Vec::new();
    let t = Instant::now();
    let mut apply_time = Duration::ZERO;
    let mut changes = Vec::new();
    let mut line = String::new();
    for i in 0..n {
        let seq = i + 1;
        let (change, patient) = upsert(&gen, &mut line, i, seq, 1);
        if i % 50 == 0 {
            sample.push(patient);
        }
        changes.push(change);
        if changes.len() == 512 || i + 1 == n {
            // A cold fill, as a new unit gets it: baseline batches, the last one finishing it
            // (the search postings are built, in key order, at that point).
            let kind = if i + 1 == n {
                ApplyKind::FinishBaseline {
                    epoch: 1,
                    snapshot_seq: seq,
                }
            } else {
                ApplyKind::Baseline { epoch: 1 }
            };
            let took = step(&cache, kind, seq, std::mem::take(&mut changes), 1);
            apply_time += took;
            if i + 1 == n {
                eprintln!(
                    "finishing the baseline (postings built, other epochs evicted): {:.1} s, peak RSS {} MiB",
                    took.as_secs_f64(),
                    peak_rss_mib()
                );
            }
        }
        if (i + 1) % 100_000 == 0 {
            eprintln!(
                "built {} in {:.0} s, RSS {} MiB (peak {} MiB)",
                i + 1,
                t.elapsed().as_secs_f64(),
                rss_mib("VmRSS:"),
                peak_rss_mib()
            );
        }
    }
    let day = |d: &Demographics| {
        d.birth_date
            .as_ref()
            .and_then(|b| b.day())
            .map(str::to_owned)
    };
    let district = |d: &Demographics| {
        d.postcode
            .as_deref()
            .and_then(|p| p.split_whitespace().next())
            .map(str::to_owned)
    };
    let mut mixed = Vec::new();
    for (i, d) in sample.iter().enumerate() {
        let fam = Some(d.family.clone()).filter(|f| !f.is_empty());
        let given = d.given.first().cloned();
        mixed.push(match i % 4 {
            0 => SearchQuery {
                family: fam,
                given: None,
                birth_date: day(d),
                postcode: None,
            },
            1 => SearchQuery {
                family: fam,
                given,
                birth_date: None,
                postcode: district(d),
            },
            2 => SearchQuery {
                family: None,
                given: None,
                birth_date: day(d),
                postcode: d.postcode.clone(),
            },
            _ => SearchQuery {
                family: fam,
                given,
                birth_date: day(d),
                postcode: d.postcode.clone(),
            },
        });
    }
    // Worst shape: the commonest family names with the busiest districts and no birth date.
    let mut fams: std::collections::HashMap<&str, usize> = Default::default();
    let mut dists: std::collections::HashMap<String, usize> = Default::default();
    for d in &sample {
        *fams.entry(d.family.as_str()).or_default() += 1;
        if let Some(x) = district(d) {
            *dists.entry(x).or_default() += 1;
        }
    }
    let mut fams: Vec<_> = fams.into_iter().collect();
    fams.sort_by_key(|(f, c)| (std::cmp::Reverse(*c), f.to_string()));
    let mut dists: Vec<_> = dists.into_iter().collect();
    dists.sort_by_key(|(d, c)| (std::cmp::Reverse(*c), d.clone()));
    let mut worst = Vec::new();
    for (f, _) in fams.iter().take(5) {
        for (d, _) in dists.iter().take(5) {
            for _ in 0..20 {
                worst.push(SearchQuery {
                    family: Some((*f).to_owned()),
                    given: None,
                    birth_date: None,
                    postcode: Some(d.clone()),
                });
            }
        }
    }
    // For a profiler: `SEARCH_BENCH_REPEAT=N` runs the worst shape N more times first.
    let repeat: usize = std::env::var("SEARCH_BENCH_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if repeat > 0 {
        eprintln!("running the worst shape {repeat} more times (SEARCH_BENCH_REPEAT)");
        for _ in 0..repeat {
            time_queries(&cache, &worst);
        }
    }
    let (m50, m99, mmax, found) = time_queries(&cache, &mixed);
    let (w50, w99, wmax, _) = time_queries(&cache, &worst);
    let worst_matched = cache.search(&worst[0]).map(|o| o.matched).unwrap_or(0);
    println!("Search on the unit's cache: {n} summaries (kerbside-synth), postings on disk\n");
    println!("| measure | value |");
    println!("| --- | --- |");
    println!(
        "| cache built through `Cache::apply` (a baseline in batches of 512, fsync each; postings built at the end) | {:.1} s of apply ({:.0} records/s) |",
        apply_time.as_secs_f64(),
        n as f64 / apply_time.as_secs_f64()
    );
    println!(
        "| mixed queries (family+dob, family+given+district, dob+postcode, all four; n = {}) | p50 {:.0} µs, p99 {:.2} ms, max {:.2} ms; {} of {} found someone |",
        mixed.len(),
        m50.as_secs_f64() * 1e6,
        m99.as_secs_f64() * 1e3,
        mmax.as_secs_f64() * 1e3,
        found,
        mixed.len()
    );
    println!(
        "| worst shape: commonest family × busiest district (n = {}; {} matched the first) | p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms |",
        worst.len(),
        worst_matched,
        w50.as_secs_f64() * 1e3,
        w99.as_secs_f64() * 1e3,
        wmax.as_secs_f64() * 1e3
    );
    println!(
        "| process peak RSS (generator included) | {} MiB |",
        peak_rss_mib()
    );
    // CHURN=n: then n of the records change (a new version each, in live-feed batches of 512),
    // enough past 65,536 for sled's changes to be merged into a new index file (the apply that
    // does it is the slowest one); its time and the memory around it.
    let churn: u64 = std::env::var("CHURN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
        .min(n);
    if churn > 0 {
        let before = rss_mib("VmRSS:");
        let mut slowest = Duration::ZERO;
        let mut total = Duration::ZERO;
        let mut seq = n;
        for i in 0..churn {
            seq += 1;
            changes.push(upsert(&gen, &mut line, i, seq, 2).0);
            if changes.len() == 512 || i + 1 == churn {
                let kind = ApplyKind::Feed {
                    first_seq: seq + 1 - changes.len() as u64,
                    last_seq: seq,
                };
                let took = step(&cache, kind, seq, std::mem::take(&mut changes), 2);
                slowest = slowest.max(took);
                total += took;
            }
        }
        println!(
            "| CHURN={churn}: updates applied (batches of 512, fsync each) | {:.1} s ({:.0}/s); slowest apply {:.0} ms (a value-log segment compacted, or sled's changes merged into the index file); RSS {} → {} MiB, peak {} MiB |",
            total.as_secs_f64(),
            churn as f64 / total.as_secs_f64(),
            slowest.as_secs_f64() * 1e3,
            before,
            rss_mib("VmRSS:"),
            peak_rss_mib()
        );
    }
}
