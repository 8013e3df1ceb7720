//! Golden bytes: the wire encoding of every message, pinned. A change here is a protocol change
//! and needs a new `PROTOCOL_VERSION`.

use firmware::proto::frame::{decode, encode, CRC};
use firmware::proto::{
    Faults, FwVersion, Health, HostFaults, HostToMcu, LinkState, McuToHost, Message,
    ShutdownReason, StateCode, Status,
};

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Encode, compare with the pinned bytes, and decode back.
fn check<M: Message>(seq: u16, msg: M, expected: &str) {
    let wire = encode(seq, &msg);
    assert_eq!(hex(&wire), expected, "{msg:?}");
    let (&last, body) = wire.split_last().expect("non-empty");
    assert_eq!(last, 0, "delimiter");
    assert!(!body.contains(&0), "no zero inside a COBS frame");
    let frame = decode::<M>(body).expect("decodes");
    assert_eq!((frame.seq, frame.msg), (seq, msg));
}

/// Bit-by-bit CRC-16/IBM-3740, independent of the `crc` crate.
fn crc16_reference(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xffff;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[test]
fn crc_is_crc16_ibm_3740() {
    assert_eq!(CRC.checksum(b"123456789"), 0x29b1);
    assert_eq!(crc16_reference(b"123456789"), 0x29b1);
    let raw = [0x01, 0x00, 0x00, 0x46];
    assert_eq!(CRC.checksum(&raw), crc16_reference(&raw));
}

#[test]
fn hand_built_get_status_frame() {
    // version 1, seq 0, kind 0x46, no payload, CRC LE; COBS: zeros become block codes.
    let raw = [0x01, 0x00, 0x00, 0x46];
    let [lo, hi] = crc16_reference(&raw).to_le_bytes();
    assert_ne!(lo, 0);
    assert_ne!(hi, 0);
    let expected = format!("02 01 01 04 46 {lo:02x} {hi:02x} 00");
    check(0, HostToMcu::GetStatus, &expected);
}

#[test]
fn mcu_to_host_messages() {
    let fw = FwVersion {
        major: 0,
        minor: 1,
        patch: 2,
    };
    check(
        1,
        McuToHost::Hello {
            version: 1,
            board_rev: 2,
            fw_version: fw,
        },
        "03 01 01 04 01 01 02 05 01 02 68 a5 00",
    );
    let status = Status {
        state: StateCode::Running,
        ignition_on: true,
        supply_mv: 13_800,
        faults: Faults::TAMPER,
        power_cycles_last_hour: 1,
        last_shutdown: Some(ShutdownReason::LowBattery),
    };
    check(
        2,
        McuToHost::Status(status),
        "03 01 02 0b 02 03 01 e8 35 04 01 02 76 a6 00",
    );
    let status_none = Status {
        last_shutdown: None,
        faults: Faults::empty(),
        ..status
    };
    check(
        3,
        McuToHost::Status(status_none),
        "03 01 03 06 02 03 01 e8 35 02 01 03 b1 35 00",
    );
    check(
        4,
        McuToHost::IgnitionChanged { on: true },
        "03 01 04 05 03 01 de 34 00",
    );
    check(
        5,
        McuToHost::IgnitionChanged { on: false },
        "03 01 05 02 03 03 4b 52 00",
    );
    let req = |reason| McuToHost::ShutdownRequest {
        reason,
        deadline_ms: 120_000,
    };
    check(
        6,
        req(ShutdownReason::IgnitionOff),
        "03 01 06 06 04 01 c0 d4 01 03 ab e6 00",
    );
    check(
        7,
        req(ShutdownReason::LowBattery),
        "03 01 07 06 04 02 c0 d4 01 03 aa 4f 00",
    );
    check(
        8,
        req(ShutdownReason::PowerFail),
        "03 01 08 06 04 03 c0 d4 01 03 39 3c 00",
    );
    check(
        9,
        McuToHost::PowerFail { budget_ms: 7_900 },
        "03 01 09 04 05 dc 1e 01 03 25 c1 00",
    );
    check(10, McuToHost::PowerRestored, "03 01 0a 04 06 73 55 00");
    check(
        11,
        McuToHost::LowBattery { millivolts: 10_800 },
        "03 01 0b 06 07 30 2a 62 a2 00",
    );
    check(12, McuToHost::Tamper, "03 01 0c 04 08 1d 06 00");
    check(
        0x1234,
        McuToHost::Ack { seq: 0xbeef },
        "09 01 34 12 09 ef be 9f e0 00",
    );
}

#[test]
fn host_to_mcu_messages() {
    check(
        1,
        HostToMcu::Hello { version: 1 },
        "03 01 01 05 41 01 35 e3 00",
    );
    check(
        2,
        HostToMcu::Heartbeat { health: Health::Ok },
        "03 01 02 02 42 03 9b 3d 00",
    );
    check(
        3,
        HostToMcu::Heartbeat {
            health: Health::Degraded,
        },
        "03 01 03 05 42 01 0e 5b 00",
    );
    check(
        4,
        HostToMcu::Heartbeat {
            health: Health::Failing,
        },
        "03 01 04 05 42 02 40 3a 00",
    );
    check(
        5,
        HostToMcu::ShutdownAck { flushed: true },
        "03 01 05 05 43 01 a6 4f 00",
    );
    check(
        6,
        HostToMcu::ShutdownAck { flushed: false },
        "03 01 06 02 43 03 5b c4 00",
    );
    check(7, HostToMcu::Zeroized, "03 01 07 04 44 a4 7f 00");
    check(
        8,
        HostToMcu::SetLeds {
            link: LinkState::None,
            faults: HostFaults::empty(),
        },
        "03 01 08 02 45 01 03 c0 bf 00",
    );
    check(
        9,
        HostToMcu::SetLeds {
            link: LinkState::Cellular,
            faults: HostFaults::empty(),
        },
        "03 01 09 03 45 01 03 a0 26 00",
    );
    check(
        10,
        HostToMcu::SetLeds {
            link: LinkState::DepotWifi,
            faults: HostFaults::empty(),
        },
        "03 01 0a 03 45 02 03 21 9d 00",
    );
    check(
        11,
        HostToMcu::SetLeds {
            link: LinkState::Syncing,
            faults: HostFaults::CERT_EXPIRED,
        },
        "03 01 0b 06 45 03 01 60 14 00",
    );
    check(12, HostToMcu::GetStatus, "03 01 0c 04 46 17 af 00");
    check(
        0xfffe,
        HostToMcu::Ack { seq: 7 },
        "06 01 fe ff 47 07 03 47 f1 00",
    );
}

/// Fails to compile when a variant is added without a golden line above.
#[allow(dead_code)]
fn every_variant_has_a_golden_line(a: McuToHost, b: HostToMcu) {
    match a {
        McuToHost::Hello { .. }
        | McuToHost::Status(_)
        | McuToHost::IgnitionChanged { .. }
        | McuToHost::ShutdownRequest { .. }
        | McuToHost::PowerFail { .. }
        | McuToHost::PowerRestored
        | McuToHost::LowBattery { .. }
        | McuToHost::Tamper
        | McuToHost::Ack { .. } => {}
    }
    match b {
        HostToMcu::Hello { .. }
        | HostToMcu::Heartbeat { .. }
        | HostToMcu::ShutdownAck { .. }
        | HostToMcu::Zeroized
        | HostToMcu::SetLeds { .. }
        | HostToMcu::GetStatus
        | HostToMcu::Ack { .. } => {}
    }
}
