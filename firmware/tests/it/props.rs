//! Property tests: the codec (round trips, canonical re-encoding, no panics on any bytes) and the
//! supervisor invariants listed at the end of `docs/supervisor.md`.

use crate::harness::{HostModel, Rig};
use firmware::config::HOUR_MS;
use firmware::proto::frame::{decode, encode, FrameDecoder};
use firmware::proto::{
    Faults, FwVersion, Health, HostFaults, HostToMcu, LinkState, McuToHost, Message,
    ShutdownReason, StateCode, Status, MAX_ENCODED_LEN,
};
use firmware::supervisor::{Inputs, State, Supervisor};
use firmware::tamper::Persisted;
use firmware::{Config, Frame, Settings};
use proptest::prelude::*;

// --- strategies ---------------------------------------------------------------------------------

fn pick<T: Copy + std::fmt::Debug + 'static>(all: &'static [T]) -> impl Strategy<Value = T> {
    proptest::sample::select(all)
}

fn arb_status() -> impl Strategy<Value = Status> {
    (
        pick(StateCode::ALL),
        any::<bool>(),
        any::<u16>(),
        0..=Faults::ALL_BITS,
        any::<u8>(),
        proptest::option::of(pick(ShutdownReason::ALL)),
    )
        .prop_map(
            |(state, ignition_on, supply_mv, bits, cycles, last)| Status {
                state,
                ignition_on,
                supply_mv,
                faults: Faults::from_bits(bits).unwrap_or_default(),
                power_cycles_last_hour: cycles,
                last_shutdown: last,
            },
        )
}

fn arb_mcu() -> impl Strategy<Value = McuToHost> {
    prop_oneof![
        (any::<u8>(), any::<u8>(), any::<[u8; 3]>()).prop_map(|(version, board_rev, v)| {
            McuToHost::Hello {
                version,
                board_rev,
                fw_version: FwVersion {
                    major: v[0],
                    minor: v[1],
                    patch: v[2],
                },
            }
        }),
        arb_status().prop_map(McuToHost::Status),
        any::<bool>().prop_map(|on| McuToHost::IgnitionChanged { on }),
        (pick(ShutdownReason::ALL), any::<u32>()).prop_map(|(reason, deadline_ms)| {
            McuToHost::ShutdownRequest {
                reason,
                deadline_ms,
            }
        }),
        any::<u32>().prop_map(|budget_ms| McuToHost::PowerFail { budget_ms }),
        Just(McuToHost::PowerRestored),
        any::<u16>().prop_map(|millivolts| McuToHost::LowBattery { millivolts }),
        Just(McuToHost::Tamper),
        any::<u16>().prop_map(|seq| McuToHost::Ack { seq }),
    ]
}

fn arb_host() -> impl Strategy<Value = HostToMcu> {
    prop_oneof![
        any::<u8>().prop_map(|version| HostToMcu::Hello { version }),
        pick(Health::ALL).prop_map(|health| HostToMcu::Heartbeat { health }),
        any::<bool>().prop_map(|flushed| HostToMcu::ShutdownAck { flushed }),
        Just(HostToMcu::Zeroized),
        (pick(LinkState::ALL), 0..=HostFaults::ALL_BITS).prop_map(|(link, bits)| {
            HostToMcu::SetLeds {
                link,
                faults: HostFaults::from_bits(bits).unwrap_or_default(),
            }
        }),
        Just(HostToMcu::GetStatus),
        any::<u16>().prop_map(|seq| HostToMcu::Ack { seq }),
    ]
}

// --- codec --------------------------------------------------------------------------------------

fn round_trip<M: Message>(seq: u16, msg: M) -> Result<(), TestCaseError> {
    let wire = encode(seq, &msg);
    prop_assert!(wire.len() <= MAX_ENCODED_LEN + 1);
    let (&delim, body) = wire.split_last().expect("non-empty");
    prop_assert_eq!(delim, 0);
    prop_assert!(!body.contains(&0));
    let frame = decode::<M>(body).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(frame, Frame { seq, msg });
    Ok(())
}

/// If `bytes` decodes, encoding the result gives `bytes` back.
fn canonical<M: Message>(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(frame) = decode::<M>(bytes) {
        let wire = encode(frame.seq, &frame.msg);
        prop_assert_eq!(&wire[..wire.len() - 1], bytes);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_mcu_message_round_trips(seq in any::<u16>(), msg in arb_mcu()) {
        round_trip(seq, msg)?;
    }

    #[test]
    fn every_host_message_round_trips(seq in any::<u16>(), msg in arb_host()) {
        round_trip(seq, msg)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_what_decodes_re_encodes_identically(
        bytes in proptest::collection::vec(any::<u8>(), 0..80)
    ) {
        canonical::<HostToMcu>(&bytes)?;
        canonical::<McuToHost>(&bytes)?;
    }

    #[test]
    fn mutated_frames_never_panic_and_stay_canonical(
        seq in any::<u16>(),
        msg in arb_host(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let wire = encode(seq, &msg);
        let mut body = wire[..wire.len() - 1].to_vec();
        for (i, b) in flips {
            let at = i.index(body.len());
            body[at] = b;
        }
        canonical::<HostToMcu>(&body)?;
    }

    #[test]
    fn streaming_decoder_never_panics_and_stays_bounded(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..20)
    ) {
        let mut d = FrameDecoder::<HostToMcu>::new();
        for chunk in &chunks {
            for frame in d.feed(chunk).flatten() {
                let wire = encode(frame.seq, &frame.msg);
                prop_assert!(wire.len() <= MAX_ENCODED_LEN + 1);
            }
            prop_assert!(d.buffered() <= MAX_ENCODED_LEN);
        }
    }

    #[test]
    fn frames_survive_garbage_and_arbitrary_chunking(
        garbage in proptest::collection::vec(any::<u8>(), 0..300),
        frames in proptest::collection::vec((any::<u16>(), arb_mcu()), 1..6),
        cuts in proptest::collection::vec(1usize..40, 1..50),
    ) {
        let mut stream = garbage;
        stream.push(0);
        for (seq, msg) in &frames {
            stream.extend_from_slice(&encode(*seq, msg));
        }
        let mut d = FrameDecoder::<McuToHost>::new();
        let mut got = Vec::new();
        let mut rest = stream.as_slice();
        let mut i = 0;
        while !rest.is_empty() {
            let n = cuts[i % cuts.len()].min(rest.len());
            let (chunk, tail) = rest.split_at(n);
            got.extend(d.feed(chunk).filter_map(Result::ok));
            rest = tail;
            i += 1;
        }
        // Garbage may by chance decode as a frame; the real frames are the last ones, in order.
        let expected: Vec<Frame<McuToHost>> =
            frames.iter().map(|(seq, msg)| Frame { seq: *seq, msg: *msg }).collect();
        prop_assert!(got.len() >= expected.len());
        prop_assert_eq!(&got[got.len() - expected.len()..], expected.as_slice());
    }
}

// --- supervisor invariants ------------------------------------------------------------------------

/// One scripted input change followed by some time.
#[derive(Clone, Copy, Debug)]
enum Act {
    Wait(u64),
    Ignition(bool),
    Supply(u16),
    Tamper(bool),
    Host(HostToMcu),
}

fn arb_act() -> impl Strategy<Value = Act> {
    prop_oneof![
        4 => (10u64..=30_000).prop_map(Act::Wait),
        1 => (120_000u64..=900_000).prop_map(Act::Wait),
        2 => any::<bool>().prop_map(Act::Ignition),
        2 => prop_oneof![
            Just(0u16), Just(5_000), Just(6_500), Just(9_000), Just(10_800), Just(11_500),
            Just(12_600), Just(13_800), 0u16..=30_000
        ].prop_map(Act::Supply),
        1 => any::<bool>().prop_map(Act::Tamper),
        3 => prop_oneof![
            Just(HostToMcu::Hello { version: 1 }),
            Just(HostToMcu::Heartbeat { health: Health::Ok }),
            Just(HostToMcu::ShutdownAck { flushed: true }),
            Just(HostToMcu::Zeroized),
            Just(HostToMcu::GetStatus),
        ].prop_map(Act::Host),
    ]
}

/// Drives a bare supervisor with `acts` (100 ms steps while waiting) and checks the shutdown
/// invariant at every step.
fn check_no_cut_while_pending(settings: Settings, acts: &[Act]) -> Result<(), TestCaseError> {
    let cfg = Config::new(settings).expect("valid");
    let mut sup = Supervisor::new(
        cfg,
        FwVersion {
            major: 0,
            minor: 1,
            patch: 0,
        },
        Persisted::default(),
    );
    let mut now = 0u64;
    let mut inputs = Inputs {
        ignition: false,
        tamper: false,
        supply_mv: 12_600,
        host: None,
    };
    let mut powered = false;
    let mut step = |now: u64, inputs: &Inputs, powered: &mut bool| -> Result<(), TestCaseError> {
        let before = sup.state();
        let out = sup.step(now, inputs);
        let acked = matches!(inputs.host, Some(HostToMcu::ShutdownAck { .. }));
        if *powered && !out.host_power {
            match before {
                State::ShutdownPending {
                    deadline_ms,
                    cut_at_ms,
                    ..
                } => {
                    let acked_earlier = cut_at_ms.is_some_and(|c| now >= c);
                    prop_assert!(
                        now >= deadline_ms || acked_earlier,
                        "cut while shutdown pending at {now}: {before:?}"
                    );
                }
                State::PowerFail { deadline_ms } => {
                    prop_assert!(acked || now >= deadline_ms, "power-fail cut early at {now}");
                }
                _ => {}
            }
        }
        if let State::PowerFail { .. } = sup.state() {
            if !matches!(before, State::PowerFail { .. }) {
                prop_assert!(
                    inputs.supply_mv < cfg.converter_min_mv,
                    "power-fail with input present"
                );
            }
        }
        prop_assert!(!out.host_reset || out.host_power, "reset implies power");
        *powered = out.host_power;
        Ok(())
    };
    for act in acts {
        match *act {
            Act::Wait(ms) => {
                let end = now + ms;
                while now < end {
                    now = (now + 100).min(end);
                    step(now, &inputs, &mut powered)?;
                }
            }
            Act::Ignition(on) => inputs.ignition = on,
            Act::Supply(mv) => inputs.supply_mv = mv,
            Act::Tamper(t) => inputs.tamper = t,
            Act::Host(msg) => {
                let with = Inputs {
                    host: Some(msg),
                    ..inputs
                };
                step(now, &with, &mut powered)?;
            }
        }
        step(now, &inputs, &mut powered)?;
    }
    Ok(())
}

/// Faster settings for long random runs (every property holds for any valid configuration).
fn quick_settings() -> Settings {
    Settings {
        off_delay_ms: 60_000,
        boot_timeout_ms: 60_000,
        shutdown_deadline_ms: 30_000,
        ..Settings::DEFAULT_12V
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn power_is_never_cut_while_a_shutdown_is_pending_unless_deadline_or_input_gone(
        acts in proptest::collection::vec(arb_act(), 1..120),
        defaults in any::<bool>(),
    ) {
        let settings = if defaults { Settings::DEFAULT_12V } else { quick_settings() };
        check_no_cut_while_pending(settings, &acts)?;
    }

    #[test]
    fn a_crank_dip_never_causes_a_shutdown(
        dips in proptest::collection::vec(
            (4_000u16..=7_000, 10u64..=40, 6_000u16..=10_500, 500u64..=20_000, 100u64..=30_000, any::<bool>()),
            1..8,
        )
    ) {
        let mut r = Rig::new(Settings::DEFAULT_12V);
        r.boot_to_running();
        let edges = r.power_edges.len();
        for (depth, dip_ms, reduced_mv, reduced_ms, after_ms, charged) in dips {
            let resting = if charged { 13_800 } else { 12_600 };
            r.supply_mv = resting - depth;
            r.run(dip_ms);
            r.supply_mv = reduced_mv;
            r.run(reduced_ms);
            r.supply_mv = resting;
            r.run(after_ms);
        }
        prop_assert_eq!(r.power_fails(), 0);
        prop_assert!(r.shutdown_requests().is_empty());
        prop_assert_eq!(r.power_edges.len(), edges, "host power never changed");
        prop_assert_eq!(r.state(), State::Running);
    }

    #[test]
    fn ignition_returning_during_the_off_delay_always_cancels_it(
        runs in proptest::collection::vec((any::<bool>(), 50u64..=8_000, 0u8..10), 1..60),
    ) {
        let settings = quick_settings();
        let mut r = Rig::new(settings);
        r.tick_ms = 50;
        r.host = HostModel { shutdown_ack_ms: None, ..HostModel::HEALTHY };
        r.boot_to_running();
        // Raw ignition runs: (level, start, end).
        let mut raw: Vec<(bool, u64, u64)> = Vec::new();
        for (on, ms, long) in runs {
            // Sometimes a long off so the off-delay can actually expire.
            let ms = if !on && long == 0 { 70_000 } else { ms };
            let start = r.now;
            // Check at the moment the level would be debounced.
            let state_at_start = r.state();
            r.ignition = on;
            r.run(ms);
            raw.push((on, start, r.now));
            if on && ms >= u64::from(settings.ignition_debounce_ms) {
                if let State::OffDelay { until_ms } = state_at_start {
                    if until_ms > start + u64::from(settings.ignition_debounce_ms) {
                        let debounced = start + u64::from(settings.ignition_debounce_ms);
                        let state_then = r.states.iter().rev().find(|(t, _)| *t <= debounced).map(|s| s.1);
                        prop_assert_eq!(state_then, Some(State::Running), "off-delay not cancelled at {}", debounced);
                    }
                }
            }
            if matches!(r.state(), State::ShutdownPending { .. } | State::Off) {
                break;
            }
        }
        // Any ignition-off shutdown request had no debounced ignition-on in the off-delay before it.
        for (t, reason) in r.shutdown_requests() {
            prop_assert_eq!(reason, ShutdownReason::IgnitionOff);
            let window_start = t.saturating_sub(u64::from(settings.off_delay_ms));
            for &(on, s, e) in &raw {
                let overlaps = s < t && e > window_start;
                prop_assert!(
                    !(on && overlaps && e - s >= u64::from(settings.ignition_debounce_ms)),
                    "ignition was on {s}..{e} inside the off-delay before the request at {t}"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn the_watchdog_never_power_cycles_more_than_the_limit_per_hour(
        limit in 1u8..=5,
        boot_s in proptest::option::weighted(0.8, 1u64..=200),
        hang_s in proptest::option::weighted(0.8, 0u64..=900),
        heartbeat_s in 1u64..=40,
        boot_timeout_s in 10u32..=180,
        ignition_toggles in proptest::collection::vec((300u64..=3_600, 5u64..=120), 0..4),
    ) {
        let settings = Settings {
            max_power_cycles_per_hour: limit,
            boot_timeout_ms: boot_timeout_s * 1_000,
            ..Settings::DEFAULT_12V
        };
        let mut r = Rig::new(settings);
        r.tick_ms = 500;
        r.host = HostModel {
            boot_ms: boot_s.map(|s| s * 1_000),
            heartbeat_ms: heartbeat_s * 1_000,
            hang_after_ms: hang_s.map(|s| s * 1_000),
            ..HostModel::HEALTHY
        };
        r.supply_mv = 13_800;
        r.ignition = true;
        for (on_s, off_s) in ignition_toggles {
            r.run(on_s * 1_000);
            r.ignition = false;
            r.run(off_s * 1_000);
            r.ignition = true;
        }
        r.run(3 * HOUR_MS);
        let starts = r.power_cycle_starts();
        for (i, &t) in starts.iter().enumerate() {
            let in_window = starts[i..].iter().filter(|&&u| u < t + HOUR_MS).count();
            prop_assert!(in_window <= usize::from(limit), "{in_window} power-cycles within an hour of {t}: {starts:?}");
        }
        if matches!(r.state(), State::Fault { .. }) {
            prop_assert!(!r.powered());
            prop_assert!(r.sup.faults(r.now).contains(Faults::WATCHDOG_LIMIT));
        }
    }
}
