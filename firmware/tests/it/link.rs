//! The shared reliable-delivery endpoint: acknowledgements, retransmission, expiry, duplicates.

use firmware::link::{Endpoint, LinkConfig, Received};
use firmware::proto::{Health, HostToMcu, McuToHost};

type Mcu = Endpoint<McuToHost, HostToMcu>;
type Host = Endpoint<HostToMcu, McuToHost>;

fn pair() -> (Mcu, Host) {
    (
        Endpoint::new(LinkConfig::default()),
        Endpoint::new(LinkConfig::default()),
    )
}

/// Move every pending frame from `from` to `to`; returns what `to` delivered.
fn pump<A, B>(now: u64, from: &mut Endpoint<A, B>, to: &mut Endpoint<B, A>) -> Vec<Received<A>>
where
    A: firmware::proto::Message,
    B: firmware::proto::Message,
{
    let mut got = Vec::new();
    while let Some(wire) = from.poll_transmit(now) {
        to.receive(now, &wire, |r| got.push(r));
    }
    got
}

#[test]
fn request_is_delivered_once_and_acknowledged() {
    let (mut mcu, mut host) = pair();
    host.send(HostToMcu::Heartbeat { health: Health::Ok })
        .expect("queued");
    let got = pump(0, &mut host, &mut mcu);
    assert_eq!(
        got,
        vec![Received::Message(HostToMcu::Heartbeat {
            health: Health::Ok
        })]
    );
    assert!(!host.is_idle(), "waiting for the ack");
    assert!(
        pump(0, &mut mcu, &mut host).is_empty(),
        "acks are not delivered"
    );
    assert!(host.is_idle());
    assert!(mcu.is_idle());
    // Nothing to retransmit later.
    assert_eq!(host.poll_transmit(10_000), None);
}

#[test]
fn lost_frame_is_retransmitted_and_duplicate_suppressed() {
    let (mut mcu, mut host) = pair();
    mcu.send(McuToHost::PowerFail { budget_ms: 7_900 })
        .expect("queued");
    let first = mcu.poll_transmit(0).expect("frame");
    // Delivered, but the ack is lost.
    let mut got = Vec::new();
    host.receive(0, &first, |r| got.push(r));
    let _lost_ack = host.poll_transmit(0);
    assert_eq!(mcu.poll_transmit(499), None);
    let again = mcu.poll_transmit(500).expect("retransmission");
    assert_eq!(again, first);
    host.receive(500, &again, |r| got.push(r));
    assert_eq!(
        got,
        vec![Received::Message(McuToHost::PowerFail { budget_ms: 7_900 })]
    );
    assert_eq!(host.stats().duplicates, 1);
    pump(500, &mut host, &mut mcu);
    assert!(mcu.is_idle());
    assert_eq!(mcu.stats().retransmits, 1);
}

#[test]
fn unacknowledged_frame_expires_after_max_attempts() {
    let mut mcu: Mcu = Endpoint::new(LinkConfig {
        retransmit_ms: 100,
        max_attempts: 3,
    });
    let seq = mcu.send(McuToHost::Tamper).expect("queued");
    let mut sent = 0;
    for now in (0..1_000).step_by(10) {
        while mcu.poll_transmit(now).is_some() {
            sent += 1;
        }
    }
    assert_eq!(sent, 3);
    let gone = mcu.poll_expired().expect("expired");
    assert_eq!((gone.seq, gone.msg), (seq, McuToHost::Tamper));
    assert!(mcu.is_idle());
}

#[test]
fn hello_resets_duplicate_detection() {
    let (mut mcu, mut host) = pair();
    host.send(HostToMcu::Heartbeat { health: Health::Ok })
        .expect("queued");
    pump(0, &mut host, &mut mcu);
    // The host restarts: a new endpoint starts at sequence 0 again.
    let mut host2: Host = Endpoint::new(LinkConfig::default());
    host2.send(HostToMcu::Hello { version: 1 }).expect("queued");
    host2
        .send(HostToMcu::Heartbeat {
            health: Health::Degraded,
        })
        .expect("queued");
    let got = pump(0, &mut host2, &mut mcu);
    assert_eq!(got.len(), 2, "{got:?}");
}

#[test]
fn queue_is_bounded() {
    let mut host: Host = Endpoint::new(LinkConfig::default());
    let mut ok = 0;
    for _ in 0..100 {
        if host.send(HostToMcu::GetStatus).is_ok() {
            ok += 1;
        }
    }
    assert_eq!(ok, firmware::link::QUEUE_LEN);
    assert_eq!(host.stats().refused, 100 - firmware::link::QUEUE_LEN as u32);
}

#[test]
fn garbage_is_reported_not_delivered() {
    let mut mcu: Mcu = Endpoint::new(LinkConfig::default());
    let mut got = Vec::new();
    mcu.receive(0, &[1, 2, 3, 0], |r| got.push(r));
    assert!(matches!(got.as_slice(), [Received::Error(_)]));
    assert_eq!(mcu.stats().bad_frames, 1);
}
