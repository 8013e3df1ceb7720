//! The host<->MCU link protocol: message types for both directions and their hand-written,
//! allocation-free payload encoding.
//!
//! A frame on the wire is `COBS(version | seq | kind | payload | crc16) 0x00`; see [`frame`] for
//! the framing and the streaming decoder, and `docs/supervisor.md` for the byte-level table.
//! Every multi-byte integer is little-endian. Every payload has exactly one encoding (booleans are
//! `0`/`1`, enums and bit sets reject unknown values, no trailing bytes), so a frame that decodes
//! re-encodes to the same bytes.
//!
//! Kinds are never zero (Oxide's host-SP practice; it keeps COBS overhead down) and the two
//! directions use disjoint kind ranges (`0x01..=0x3f` MCU to host, `0x41..=0x7f` host to MCU), so
//! a frame sent the wrong way is rejected as an unknown kind instead of being misread.

pub mod frame;

use core::fmt;

/// The only protocol version this firmware speaks. Frames carrying another version are rejected
/// with [`DecodeError::Version`]; each side states its version in `Hello`.
pub const PROTOCOL_VERSION: u8 = 1;
/// Bytes before the payload in a decoded frame: version (1), sequence (2), kind (1).
pub const HEADER_LEN: usize = 4;
/// Bytes of CRC-16 after the payload.
pub const CRC_LEN: usize = 2;
/// Largest decoded frame (header + payload + CRC) either side will build or accept.
pub const MAX_FRAME_LEN: usize = 64;
/// Largest payload that fits in a frame.
pub const MAX_PAYLOAD_LEN: usize = MAX_FRAME_LEN - HEADER_LEN - CRC_LEN;
/// Largest COBS-encoded frame, without the `0x00` delimiter.
pub const MAX_ENCODED_LEN: usize = MAX_FRAME_LEN + MAX_FRAME_LEN.div_ceil(254);
/// Largest frame on the wire, including the `0x00` delimiter.
pub const MAX_WIRE_LEN: usize = MAX_ENCODED_LEN + 1;

/// Why a received frame was rejected. Never a panic: every byte sequence maps to a frame or to
/// one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// More bytes arrived before a delimiter than any valid frame can hold; they were discarded.
    Oversized,
    /// The bytes between two delimiters are not valid COBS.
    Cobs,
    /// Too short to hold a header and a CRC.
    TooShort,
    /// The CRC does not match the contents.
    Crc {
        /// CRC computed over the received bytes.
        computed: u16,
        /// CRC carried by the frame.
        received: u16,
    },
    /// A protocol version this side does not speak.
    Version {
        /// The version byte received.
        got: u8,
    },
    /// A message kind unknown for this direction.
    UnknownKind {
        /// The kind byte received.
        kind: u8,
    },
    /// The payload does not decode as the kind's message (length or field value).
    BadPayload {
        /// The kind byte received.
        kind: u8,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Oversized => write!(f, "frame longer than {MAX_ENCODED_LEN} bytes discarded"),
            Self::Cobs => write!(f, "invalid cobs encoding"),
            Self::TooShort => write!(f, "frame too short"),
            Self::Crc { computed, received } => {
                write!(
                    f,
                    "crc mismatch: computed {computed:#06x}, received {received:#06x}"
                )
            }
            Self::Version { got } => {
                write!(
                    f,
                    "unsupported protocol version {got} (expected {PROTOCOL_VERSION})"
                )
            }
            Self::UnknownKind { kind } => write!(f, "unknown message kind {kind:#04x}"),
            Self::BadPayload { kind } => write!(f, "malformed payload for kind {kind:#04x}"),
        }
    }
}

impl core::error::Error for DecodeError {}

/// A message type that can travel in a frame: one per direction.
pub trait Message: Sized + Clone + PartialEq + fmt::Debug {
    /// The kind byte (never zero).
    fn kind(&self) -> u8;
    /// Append the payload to `out`.
    fn write_payload(&self, out: &mut Writer);
    /// Parse a payload of the given kind; the whole slice must be consumed.
    fn read_payload(kind: u8, payload: &[u8]) -> Result<Self, DecodeError>;
    /// The acknowledgement of the frame with sequence number `seq`.
    fn ack(seq: u16) -> Self;
    /// `Some(seq)` when this message is an acknowledgement.
    fn acked_seq(&self) -> Option<u16>;
    /// Whether this message opens a session (resets duplicate detection on the receiver).
    fn is_hello(&self) -> bool;
}

/// Fixed-capacity payload writer (payloads are far smaller than the capacity).
#[derive(Debug)]
pub struct Writer {
    buf: [u8; MAX_PAYLOAD_LEN],
    len: usize,
}

impl Default for Writer {
    fn default() -> Self {
        Self::new()
    }
}

impl Writer {
    /// An empty writer.
    pub const fn new() -> Self {
        Self {
            buf: [0; MAX_PAYLOAD_LEN],
            len: 0,
        }
    }
    /// The bytes written so far.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }
    /// Append one byte. Payloads are bounded by construction, so overflow cannot happen; should
    /// it ever, the byte is dropped and the frame fails its round-trip tests rather than panic.
    pub fn u8(&mut self, v: u8) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = v;
            self.len += 1;
        }
    }
    /// Append a boolean as `0`/`1`.
    pub fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }
    /// Append a little-endian `u16`.
    pub fn u16(&mut self, v: u16) {
        v.to_le_bytes().into_iter().for_each(|b| self.u8(b));
    }
    /// Append a little-endian `u32`.
    pub fn u32(&mut self, v: u32) {
        v.to_le_bytes().into_iter().for_each(|b| self.u8(b));
    }
}

/// Strict payload reader: every accessor fails rather than read past the end, and [`finish`]
/// rejects trailing bytes.
///
/// [`finish`]: Reader::finish
#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    kind: u8,
}

impl<'a> Reader<'a> {
    /// A reader over the payload of a frame of `kind`.
    pub fn new(kind: u8, bytes: &'a [u8]) -> Self {
        Self { bytes, kind }
    }
    fn bad(&self) -> DecodeError {
        DecodeError::BadPayload { kind: self.kind }
    }
    /// Read one byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        let (&first, rest) = self.bytes.split_first().ok_or(self.bad())?;
        self.bytes = rest;
        Ok(first)
    }
    /// Read a boolean; only `0` and `1` are valid.
    pub fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.bad()),
        }
    }
    /// Read a little-endian `u16`.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }
    /// Read a little-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes([
            self.u8()?,
            self.u8()?,
            self.u8()?,
            self.u8()?,
        ]))
    }
    /// Map a byte through `f`, rejecting values it does not know.
    pub fn enumerated<T>(&mut self, f: impl FnOnce(u8) -> Option<T>) -> Result<T, DecodeError> {
        let v = self.u8()?;
        f(v).ok_or(self.bad())
    }
    /// Succeed only if every byte was consumed.
    pub fn finish<T>(self, value: T) -> Result<T, DecodeError> {
        if self.bytes.is_empty() {
            Ok(value)
        } else {
            Err(self.bad())
        }
    }
}

macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $value:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum $name {
            $($(#[$vmeta])* $variant = $value,)+
        }
        impl $name {
            /// Every value, in wire order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];
            /// The wire byte.
            pub const fn to_u8(self) -> u8 {
                self as u8
            }
            /// The value for a wire byte, if known.
            pub const fn from_u8(v: u8) -> Option<Self> {
                match v {
                    $($value => Some($name::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

wire_enum! {
    /// Why the supervisor asks the host to shut down (and why it last cut power).
    ShutdownReason {
        /// The off-delay after ignition off expired.
        IgnitionOff = 1,
        /// The supply stayed below the low-battery threshold for the configured time.
        LowBattery = 2,
        /// Input power was lost and the hold-up budget ran out or the host acknowledged.
        PowerFail = 3,
    }
}

wire_enum! {
    /// The host's own view of its health, sent with every heartbeat.
    Health {
        /// All services running.
        Ok = 0,
        /// Running, but something needs attention (e.g. the cache is being rebuilt).
        Degraded = 1,
        /// The daemon is failing; the supervisor keeps watching heartbeats only.
        Failing = 2,
    }
}

wire_enum! {
    /// The upstream link state the host shows on the link LED.
    LinkState {
        /// No upstream link.
        None = 0,
        /// Connected over cellular.
        Cellular = 1,
        /// Connected over depot Wi-Fi.
        DepotWifi = 2,
        /// A sync is in progress.
        Syncing = 3,
    }
}

wire_enum! {
    /// Coarse supervisor state, as reported in `Status`.
    StateCode {
        /// Host unpowered, waiting for ignition.
        Off = 0,
        /// Ignition on; waiting out the power-on delay.
        PowerOnDelay = 1,
        /// Host powered, waiting for its hello.
        Booting = 2,
        /// Host up and heartbeating.
        Running = 3,
        /// Ignition off; off-delay running.
        OffDelay = 4,
        /// Shutdown requested; waiting for the acknowledgement or the deadline.
        ShutdownPending = 5,
        /// Input power lost; the hold-up capacitor carries the load.
        PowerFail = 6,
        /// Host reset line asserted by the watchdog.
        WatchdogReset = 7,
        /// Host power cut by the watchdog for a power cycle.
        PowerCycle = 8,
        /// Watchdog power-cycle limit reached; host stays off.
        Fault = 9,
    }
}

/// A set of fault flags (a `u8` bit set on the wire; unknown bits are rejected).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Faults(u8);

impl Faults {
    /// The host was reset or power-cycled by the watchdog within the last hour.
    pub const WATCHDOG: Faults = Faults(0x01);
    /// A low-battery shutdown happened and the battery has not recovered.
    pub const LOW_BATTERY: Faults = Faults(0x02);
    /// The enclosure tamper latch is set.
    pub const TAMPER: Faults = Faults(0x04);
    /// The host reports its certificate expired.
    pub const CERT_EXPIRED: Faults = Faults(0x08);
    /// The watchdog power-cycle limit was hit; the host is held off.
    pub const WATCHDOG_LIMIT: Faults = Faults(0x10);
    /// Every defined bit.
    pub const ALL_BITS: u8 = 0x1f;

    /// No faults.
    pub const fn empty() -> Self {
        Faults(0)
    }
    /// The raw bits.
    pub const fn bits(self) -> u8 {
        self.0
    }
    /// The set for raw bits, if every bit is defined.
    pub const fn from_bits(bits: u8) -> Option<Self> {
        if bits & !Self::ALL_BITS == 0 {
            Some(Faults(bits))
        } else {
            None
        }
    }
    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: Faults) -> bool {
        self.0 & other.0 == other.0
    }
    /// Set or clear the flags of `other`.
    pub fn set(&mut self, other: Faults, on: bool) {
        if on {
            self.0 |= other.0;
        } else {
            self.0 &= !other.0;
        }
    }
    /// Whether no flag is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// Faults only the host knows about and shows through the supervisor's fault LED.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HostFaults(u8);

impl HostFaults {
    /// The host's operational certificate has expired.
    pub const CERT_EXPIRED: HostFaults = HostFaults(0x01);
    /// Every defined bit.
    pub const ALL_BITS: u8 = 0x01;

    /// No faults.
    pub const fn empty() -> Self {
        HostFaults(0)
    }
    /// The raw bits.
    pub const fn bits(self) -> u8 {
        self.0
    }
    /// The set for raw bits, if every bit is defined.
    pub const fn from_bits(bits: u8) -> Option<Self> {
        if bits & !Self::ALL_BITS == 0 {
            Some(HostFaults(bits))
        } else {
            None
        }
    }
    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: HostFaults) -> bool {
        self.0 & other.0 == other.0
    }
}

/// Firmware version carried in the MCU's hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FwVersion {
    /// Major version.
    pub major: u8,
    /// Minor version.
    pub minor: u8,
    /// Patch version.
    pub patch: u8,
}

/// The supervisor's answer to `GetStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Status {
    /// Coarse state.
    pub state: StateCode,
    /// Debounced ignition.
    pub ignition_on: bool,
    /// Last supply reading in millivolts.
    pub supply_mv: u16,
    /// Current fault flags.
    pub faults: Faults,
    /// Watchdog power-cycles within the last hour.
    pub power_cycles_last_hour: u8,
    /// Why the supervisor last cut host power, if it has since start-up (wire `0` = none).
    pub last_shutdown: Option<ShutdownReason>,
}

/// Messages from the supervisor MCU to the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum McuToHost {
    /// Reply to the host's hello: protocol version, board revision, firmware version.
    Hello {
        /// Protocol version the MCU speaks.
        version: u8,
        /// Board revision (see `hw::pins`).
        board_rev: u8,
        /// Firmware version.
        fw_version: FwVersion,
    },
    /// Reply to `GetStatus`.
    Status(Status),
    /// Debounced ignition changed.
    IgnitionChanged {
        /// New ignition level.
        on: bool,
    },
    /// Please shut down; power is cut at the acknowledgement or after `deadline_ms`.
    ShutdownRequest {
        /// Why.
        reason: ShutdownReason,
        /// Milliseconds until the hard cut.
        deadline_ms: u32,
    },
    /// Input power lost; the host has `budget_ms` of hold-up energy left.
    PowerFail {
        /// Milliseconds until the cut.
        budget_ms: u32,
    },
    /// Input power returned within the budget; carry on.
    PowerRestored,
    /// The supply has been low long enough to force a shutdown.
    LowBattery {
        /// Supply reading in millivolts.
        millivolts: u16,
    },
    /// The enclosure tamper latch is set: destroy the cache data key, then send `Zeroized`.
    Tamper,
    /// Acknowledges the host frame with this sequence number.
    Ack {
        /// Sequence number acknowledged.
        seq: u16,
    },
}

impl McuToHost {
    /// Kind byte of `Hello`.
    pub const KIND_HELLO: u8 = 0x01;
    /// Kind byte of `Status`.
    pub const KIND_STATUS: u8 = 0x02;
    /// Kind byte of `IgnitionChanged`.
    pub const KIND_IGNITION_CHANGED: u8 = 0x03;
    /// Kind byte of `ShutdownRequest`.
    pub const KIND_SHUTDOWN_REQUEST: u8 = 0x04;
    /// Kind byte of `PowerFail`.
    pub const KIND_POWER_FAIL: u8 = 0x05;
    /// Kind byte of `PowerRestored`.
    pub const KIND_POWER_RESTORED: u8 = 0x06;
    /// Kind byte of `LowBattery`.
    pub const KIND_LOW_BATTERY: u8 = 0x07;
    /// Kind byte of `Tamper`.
    pub const KIND_TAMPER: u8 = 0x08;
    /// Kind byte of `Ack`.
    pub const KIND_ACK: u8 = 0x09;
}

impl Message for McuToHost {
    fn kind(&self) -> u8 {
        match self {
            Self::Hello { .. } => Self::KIND_HELLO,
            Self::Status(_) => Self::KIND_STATUS,
            Self::IgnitionChanged { .. } => Self::KIND_IGNITION_CHANGED,
            Self::ShutdownRequest { .. } => Self::KIND_SHUTDOWN_REQUEST,
            Self::PowerFail { .. } => Self::KIND_POWER_FAIL,
            Self::PowerRestored => Self::KIND_POWER_RESTORED,
            Self::LowBattery { .. } => Self::KIND_LOW_BATTERY,
            Self::Tamper => Self::KIND_TAMPER,
            Self::Ack { .. } => Self::KIND_ACK,
        }
    }

    fn write_payload(&self, w: &mut Writer) {
        match *self {
            Self::Hello {
                version,
                board_rev,
                fw_version,
            } => {
                w.u8(version);
                w.u8(board_rev);
                w.u8(fw_version.major);
                w.u8(fw_version.minor);
                w.u8(fw_version.patch);
            }
            Self::Status(s) => {
                w.u8(s.state.to_u8());
                w.bool(s.ignition_on);
                w.u16(s.supply_mv);
                w.u8(s.faults.bits());
                w.u8(s.power_cycles_last_hour);
                w.u8(s.last_shutdown.map_or(0, ShutdownReason::to_u8));
            }
            Self::IgnitionChanged { on } => w.bool(on),
            Self::ShutdownRequest {
                reason,
                deadline_ms,
            } => {
                w.u8(reason.to_u8());
                w.u32(deadline_ms);
            }
            Self::PowerFail { budget_ms } => w.u32(budget_ms),
            Self::PowerRestored | Self::Tamper => {}
            Self::LowBattery { millivolts } => w.u16(millivolts),
            Self::Ack { seq } => w.u16(seq),
        }
    }

    fn read_payload(kind: u8, payload: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(kind, payload);
        let msg = match kind {
            Self::KIND_HELLO => Self::Hello {
                version: r.u8()?,
                board_rev: r.u8()?,
                fw_version: FwVersion {
                    major: r.u8()?,
                    minor: r.u8()?,
                    patch: r.u8()?,
                },
            },
            Self::KIND_STATUS => Self::Status(Status {
                state: r.enumerated(StateCode::from_u8)?,
                ignition_on: r.bool()?,
                supply_mv: r.u16()?,
                faults: r.enumerated(Faults::from_bits)?,
                power_cycles_last_hour: r.u8()?,
                last_shutdown: r.enumerated(|v| match v {
                    0 => Some(None),
                    v => ShutdownReason::from_u8(v).map(Some),
                })?,
            }),
            Self::KIND_IGNITION_CHANGED => Self::IgnitionChanged { on: r.bool()? },
            Self::KIND_SHUTDOWN_REQUEST => Self::ShutdownRequest {
                reason: r.enumerated(ShutdownReason::from_u8)?,
                deadline_ms: r.u32()?,
            },
            Self::KIND_POWER_FAIL => Self::PowerFail {
                budget_ms: r.u32()?,
            },
            Self::KIND_POWER_RESTORED => Self::PowerRestored,
            Self::KIND_LOW_BATTERY => Self::LowBattery {
                millivolts: r.u16()?,
            },
            Self::KIND_TAMPER => Self::Tamper,
            Self::KIND_ACK => Self::Ack { seq: r.u16()? },
            kind => return Err(DecodeError::UnknownKind { kind }),
        };
        r.finish(msg)
    }

    fn ack(seq: u16) -> Self {
        Self::Ack { seq }
    }

    fn acked_seq(&self) -> Option<u16> {
        match *self {
            Self::Ack { seq } => Some(seq),
            _ => None,
        }
    }

    fn is_hello(&self) -> bool {
        matches!(self, Self::Hello { .. })
    }
}

/// Messages from the host to the supervisor MCU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HostToMcu {
    /// The host daemon (re)started and speaks `version`.
    Hello {
        /// Protocol version the host speaks.
        version: u8,
    },
    /// The host is alive; feeds the host watchdog.
    Heartbeat {
        /// The host's own health.
        health: Health,
    },
    /// The host finished its shutdown or power-fail work; power may be cut.
    ShutdownAck {
        /// Whether the cache and audit journal were flushed.
        flushed: bool,
    },
    /// The host destroyed the cache data key after a tamper event.
    Zeroized,
    /// Link LED state and host-side faults to show.
    SetLeds {
        /// Upstream link state.
        link: LinkState,
        /// Host-side faults.
        faults: HostFaults,
    },
    /// Ask for a `Status`.
    GetStatus,
    /// Acknowledges the MCU frame with this sequence number.
    Ack {
        /// Sequence number acknowledged.
        seq: u16,
    },
}

impl HostToMcu {
    /// Kind byte of `Hello`.
    pub const KIND_HELLO: u8 = 0x41;
    /// Kind byte of `Heartbeat`.
    pub const KIND_HEARTBEAT: u8 = 0x42;
    /// Kind byte of `ShutdownAck`.
    pub const KIND_SHUTDOWN_ACK: u8 = 0x43;
    /// Kind byte of `Zeroized`.
    pub const KIND_ZEROIZED: u8 = 0x44;
    /// Kind byte of `SetLeds`.
    pub const KIND_SET_LEDS: u8 = 0x45;
    /// Kind byte of `GetStatus`.
    pub const KIND_GET_STATUS: u8 = 0x46;
    /// Kind byte of `Ack`.
    pub const KIND_ACK: u8 = 0x47;
}

impl Message for HostToMcu {
    fn kind(&self) -> u8 {
        match self {
            Self::Hello { .. } => Self::KIND_HELLO,
            Self::Heartbeat { .. } => Self::KIND_HEARTBEAT,
            Self::ShutdownAck { .. } => Self::KIND_SHUTDOWN_ACK,
            Self::Zeroized => Self::KIND_ZEROIZED,
            Self::SetLeds { .. } => Self::KIND_SET_LEDS,
            Self::GetStatus => Self::KIND_GET_STATUS,
            Self::Ack { .. } => Self::KIND_ACK,
        }
    }

    fn write_payload(&self, w: &mut Writer) {
        match *self {
            Self::Hello { version } => w.u8(version),
            Self::Heartbeat { health } => w.u8(health.to_u8()),
            Self::ShutdownAck { flushed } => w.bool(flushed),
            Self::Zeroized | Self::GetStatus => {}
            Self::SetLeds { link, faults } => {
                w.u8(link.to_u8());
                w.u8(faults.bits());
            }
            Self::Ack { seq } => w.u16(seq),
        }
    }

    fn read_payload(kind: u8, payload: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(kind, payload);
        let msg = match kind {
            Self::KIND_HELLO => Self::Hello { version: r.u8()? },
            Self::KIND_HEARTBEAT => Self::Heartbeat {
                health: r.enumerated(Health::from_u8)?,
            },
            Self::KIND_SHUTDOWN_ACK => Self::ShutdownAck { flushed: r.bool()? },
            Self::KIND_ZEROIZED => Self::Zeroized,
            Self::KIND_SET_LEDS => Self::SetLeds {
                link: r.enumerated(LinkState::from_u8)?,
                faults: r.enumerated(HostFaults::from_bits)?,
            },
            Self::KIND_GET_STATUS => Self::GetStatus,
            Self::KIND_ACK => Self::Ack { seq: r.u16()? },
            kind => return Err(DecodeError::UnknownKind { kind }),
        };
        r.finish(msg)
    }

    fn ack(seq: u16) -> Self {
        Self::Ack { seq }
    }

    fn acked_seq(&self) -> Option<u16> {
        match *self {
            Self::Ack { seq } => Some(seq),
            _ => None,
        }
    }

    fn is_hello(&self) -> bool {
        matches!(self, Self::Hello { .. })
    }
}
