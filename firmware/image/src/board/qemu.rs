//! The QEMU board: `mps2-an386` (an Arm MPS2 FPGA board with a Cortex-M4F), as QEMU 7.2 emulates
//! it.
//!
//! | board signal | real board (STM32G474, rev B) | here |
//! | --- | --- | --- |
//! | host link | USART2 (PA2/PA3), 115 200 Bd | CMSDK UART0 (0x4000_4000) → `-serial pty` |
//! | ignition, tamper, supply ADC | PB0, PC13 (RTC_TAMP1), PA0 (ADC1) | virtual pins, set over the harness UART |
//! | host power, host reset | PB1, PB2 (open drain) | virtual pins, reported over the harness UART |
//! | LEDs | PC6–PC8 | FPGAIO LED0/LED1 (power, link) and a virtual fault LED |
//! | `now_ms` | SysTick, 1 kHz from the 170 MHz core clock | SysTick, 1 kHz from the 25 MHz core clock |
//! | independent watchdog | IWDG (LSI, 1 s) | CMSDK APB watchdog (0x4000_8000): NMI, then reset, 1 s |
//! | backup domain (tamper latch, key share) | TAMP backup registers (VBAT) | a `.uninit` RAM block that survives an MCU reset |
//! | test harness | — | CMSDK UART1 (0x4000_5000) → the second `-serial` |
//!
//! The vehicle's signals, which QEMU cannot drive, are set by the harness ([`crate::harness`]); the
//! pins read them through the same `firmware::board::Board` (embedded-hal pins and an ADC channel
//! behind a divider) as the real board. A cold start in QEMU begins with a cleared tamper latch
//! (a workshop-provisioned board); the real board's blank backup domain counts as tampered.

use crate::app::{App, Event, Platform, PowerHold};
use crate::harness::{self, Command, Line, LineReader, Vehicle};
use core::convert::Infallible;
use core::fmt::{self, Write};
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, Ordering};
use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::exception;
use embedded_hal::digital::{ErrorType, InputPin, OutputPin};
use firmware::board::{AdcChannel, Board, Divider};
use firmware::link::LinkStats;
use firmware::proto::HostToMcu;
use firmware::supervisor::{Inputs, Outputs, Supervisor};
use firmware::tamper::{BackupDomain, Persisted};
use firmware::{Config, Settings, FW_VERSION};

/// The core clock QEMU gives the mps2-an386 (SysTick counts it).
pub const CORE_HZ: u32 = 25_000_000;
const TICKS_PER_MS: u32 = CORE_HZ / 1_000;
const BOARD_NAME: &str = "qemu-mps2-an386";

// --- registers -----------------------------------------------------------------------------------

const UART0: usize = 0x4000_4000;
const UART1: usize = 0x4000_5000;
const UART_DATA: usize = 0x00;
const UART_STATE: usize = 0x04;
const UART_CTRL: usize = 0x08;
const UART_INTCLEAR: usize = 0x0c;
const UART_BAUDDIV: usize = 0x10;
const STATE_TXFULL: u32 = 1 << 0;
const STATE_RXFULL: u32 = 1 << 1;
const CTRL_TXEN: u32 = 1 << 0;
const CTRL_RXEN: u32 = 1 << 1;
const CTRL_RXINTEN: u32 = 1 << 3;
/// NVIC numbers of UART0 RX and UART1 RX on mps2-an385/an386.
const IRQ_UART0_RX: u32 = 0;
const IRQ_UART1_RX: u32 = 2;

const WATCHDOG: usize = 0x4000_8000;
const WDOG_LOAD: usize = 0x00;
const WDOG_CTRL: usize = 0x08;
const WDOG_INTCLR: usize = 0x0c;
const WDOG_LOCK: usize = 0xc00;
const WDOG_UNLOCK: u32 = 0x1ACC_E551;

const FPGAIO_LED0: usize = 0x4002_8000;

/// Polls of a full transmitter before a byte is dropped (a peer that does not read must not stop
/// the supervisor; the link retransmits).
const TX_SPIN: u32 = 20_000;

fn reg_read(addr: usize) -> u32 {
    // SAFETY: `addr` is one of the memory-mapped peripheral registers listed above, which exist on
    // mps2-an386 and are 32-bit aligned; a volatile read has no other effect on memory.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

fn reg_write(addr: usize, value: u32) {
    // SAFETY: as in `reg_read`; these registers alias no Rust object.
    unsafe { core::ptr::write_volatile(addr as *mut u32, value) }
}

/// A CMSDK APB UART.
#[derive(Clone, Copy)]
struct Uart(usize);

impl Uart {
    fn init(self) {
        reg_write(self.0 + UART_BAUDDIV, CORE_HZ / 115_200);
        reg_write(self.0 + UART_CTRL, CTRL_TXEN | CTRL_RXEN | CTRL_RXINTEN);
    }

    fn read(self) -> Option<u8> {
        if reg_read(self.0 + UART_STATE) & STATE_RXFULL == 0 {
            return None;
        }
        Some((reg_read(self.0 + UART_DATA) & 0xff) as u8)
    }

    fn write(self, bytes: &[u8]) {
        for &b in bytes {
            let mut spins = 0;
            while reg_read(self.0 + UART_STATE) & STATE_TXFULL != 0 && spins < TX_SPIN {
                spins += 1;
            }
            if spins < TX_SPIN {
                reg_write(self.0 + UART_DATA, u32::from(b));
            }
        }
    }
}

impl Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        Uart::write(*self, s.as_bytes());
        Ok(())
    }
}

// --- time ----------------------------------------------------------------------------------------

static MILLIS: AtomicU32 = AtomicU32::new(0);

#[exception]
fn SysTick() {
    MILLIS.fetch_add(1, Ordering::Relaxed);
}

/// Any device interrupt (the UART receive interrupts): clear it; the main loop, woken from `wfi`,
/// reads the bytes.
#[exception]
unsafe fn DefaultHandler(_irqn: i16) {
    reg_write(UART0 + UART_INTCLEAR, 0xf);
    reg_write(UART1 + UART_INTCLEAR, 0xf);
}

/// Core cycles since start-up: milliseconds times ticks per millisecond plus the SysTick count.
fn cycles_now() -> u64 {
    loop {
        let before = MILLIS.load(Ordering::Relaxed);
        // SAFETY: reading SysTick's current-value register has no side effect.
        let cvr = unsafe { (*cortex_m::peripheral::SYST::PTR).cvr.read() } & 0x00ff_ffff;
        if MILLIS.load(Ordering::Relaxed) == before {
            let into = (TICKS_PER_MS - 1).saturating_sub(cvr);
            return u64::from(before) * u64::from(TICKS_PER_MS) + u64::from(into);
        }
    }
}

// --- the virtual pins ----------------------------------------------------------------------------

static IGNITION: AtomicBool = AtomicBool::new(false);
static TAMPER: AtomicBool = AtomicBool::new(false);
static SUPPLY_COUNTS: AtomicU16 = AtomicU16::new(0);
static HOST_POWER: AtomicBool = AtomicBool::new(false);
/// Open drain with a pull-up: high (not in reset) unless driven low.
static HOST_RESET_N: AtomicBool = AtomicBool::new(true);
static LED_FAULT: AtomicBool = AtomicBool::new(false);

/// The input-sense divider of `hw::pins` (100 kΩ over 10 kΩ, 3.3 V, 12 bits).
const DIVIDER: Divider = Divider {
    vref_mv: 3_300,
    full_scale: 4_095,
    r_top_ohm: 100_000,
    r_bottom_ohm: 10_000,
};

/// ADC counts the divider gives for `mv` at the input (rounded, clamped to full scale).
fn counts_for(mv: u16) -> u16 {
    let num = u64::from(mv) * u64::from(DIVIDER.r_bottom_ohm) * u64::from(DIVIDER.full_scale);
    let den = (u64::from(DIVIDER.r_top_ohm) + u64::from(DIVIDER.r_bottom_ohm))
        * u64::from(DIVIDER.vref_mv);
    let counts = (num + den / 2) / den.max(1);
    u16::try_from(counts.min(u64::from(DIVIDER.full_scale))).unwrap_or(0)
}

/// An input pin wired to a harness-driven signal.
pub struct VirtualIn(&'static AtomicBool);
/// An output pin whose level the harness reports.
pub struct VirtualOut(&'static AtomicBool);
/// An LED bit of the FPGAIO block.
pub struct FpgaLed(u32);
/// The supply-sense ADC channel.
pub struct VirtualAdc;

impl ErrorType for VirtualIn {
    type Error = Infallible;
}
impl InputPin for VirtualIn {
    fn is_high(&mut self) -> Result<bool, Infallible> {
        Ok(self.0.load(Ordering::Relaxed))
    }
    fn is_low(&mut self) -> Result<bool, Infallible> {
        Ok(!self.0.load(Ordering::Relaxed))
    }
}
impl ErrorType for VirtualOut {
    type Error = Infallible;
}
impl OutputPin for VirtualOut {
    fn set_high(&mut self) -> Result<(), Infallible> {
        self.0.store(true, Ordering::Relaxed);
        Ok(())
    }
    fn set_low(&mut self) -> Result<(), Infallible> {
        self.0.store(false, Ordering::Relaxed);
        Ok(())
    }
}
impl ErrorType for FpgaLed {
    type Error = Infallible;
}
impl OutputPin for FpgaLed {
    fn set_high(&mut self) -> Result<(), Infallible> {
        reg_write(FPGAIO_LED0, reg_read(FPGAIO_LED0) | (1 << self.0));
        Ok(())
    }
    fn set_low(&mut self) -> Result<(), Infallible> {
        reg_write(FPGAIO_LED0, reg_read(FPGAIO_LED0) & !(1 << self.0));
        Ok(())
    }
}
impl AdcChannel for VirtualAdc {
    type Error = Infallible;
    fn read_counts(&mut self) -> Result<u16, Infallible> {
        Ok(SUPPLY_COUNTS.load(Ordering::Relaxed))
    }
}

type QemuBoard =
    Board<VirtualIn, VirtualIn, VirtualOut, VirtualOut, FpgaLed, FpgaLed, VirtualOut, VirtualAdc>;

// --- what survives an MCU reset ------------------------------------------------------------------

const WARM_WORDS: usize = 32;
const WARM_MAGIC: u32 = 0x4b53_574d;
const W_MAGIC: usize = 0;
const W_REASON: usize = 1;
const W_BACKUP: usize = 2;
const W_KEY_ERASED: usize = 3;
const W_IGNITION: usize = 4;
const W_SUPPLY: usize = 5;
const W_HOST_POWER: usize = 6;
const W_SETTINGS: usize = 8;
const SETTINGS_WORDS: usize = 19;
const W_CHECK: usize = WARM_WORDS - 1;
const REASON_NONE: u32 = 0;
const REASON_PANIC: u32 = 1;

/// The backup domain and the vehicle's levels: RAM that start-up neither zeroes nor copies, so it
/// keeps its contents over a reset (QEMU does not clear RAM on a system reset).
#[link_section = ".uninit.KERBSIDE_WARM"]
static mut WARM: MaybeUninit<[u32; WARM_WORDS]> = MaybeUninit::uninit();

fn warm_ptr() -> *mut u32 {
    core::ptr::addr_of_mut!(WARM).cast::<u32>()
}

fn warm_get(i: usize) -> u32 {
    let i = i.min(WARM_WORDS - 1);
    // SAFETY: `i` is within the 32-word block; the block is plain memory only this module touches
    // (single core, never from an interrupt), and any bit pattern is a valid `u32`.
    unsafe { core::ptr::read_volatile(warm_ptr().add(i)) }
}

fn warm_set(i: usize, v: u32) {
    let i = i.min(WARM_WORDS - 1);
    // SAFETY: as in `warm_get`.
    unsafe { core::ptr::write_volatile(warm_ptr().add(i), v) }
    if i != W_CHECK {
        warm_set(W_CHECK, warm_checksum());
    }
}

fn warm_checksum() -> u32 {
    (0..W_CHECK).fold(0x9e37_79b9u32, |acc, i| acc.rotate_left(5) ^ warm_get(i))
}

fn warm_valid() -> bool {
    warm_get(W_MAGIC) == WARM_MAGIC && warm_get(W_CHECK) == warm_checksum()
}

fn settings_to_words(s: &Settings) -> [u32; SETTINGS_WORDS] {
    [
        s.ignition_debounce_ms,
        s.power_on_delay_ms,
        s.boot_timeout_ms,
        s.off_delay_ms,
        s.shutdown_deadline_ms,
        s.halt_grace_ms,
        u32::from(s.converter_min_mv),
        s.power_fail_confirm_ms,
        s.hold_up_budget_ms,
        u32::from(s.power_restore_mv),
        s.power_restore_ms,
        u32::from(s.low_battery_mv),
        s.low_battery_for_ms,
        u32::from(s.low_battery_resume_mv),
        s.watchdog_timeout_ms,
        s.reset_pulse_ms,
        s.power_cycle_off_ms,
        u32::from(s.max_power_cycles_per_hour),
        u32::from(s.board_rev),
    ]
}

fn settings_from_words(w: &[u32; SETTINGS_WORDS]) -> Settings {
    let h = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
    let b = |v: u32| u8::try_from(v).unwrap_or(u8::MAX);
    Settings {
        ignition_debounce_ms: w[0],
        power_on_delay_ms: w[1],
        boot_timeout_ms: w[2],
        off_delay_ms: w[3],
        shutdown_deadline_ms: w[4],
        halt_grace_ms: w[5],
        converter_min_mv: h(w[6]),
        power_fail_confirm_ms: w[7],
        hold_up_budget_ms: w[8],
        power_restore_mv: h(w[9]),
        power_restore_ms: w[10],
        low_battery_mv: h(w[11]),
        low_battery_for_ms: w[12],
        low_battery_resume_mv: h(w[13]),
        watchdog_timeout_ms: w[14],
        reset_pulse_ms: w[15],
        power_cycle_off_ms: w[16],
        max_power_cycles_per_hour: b(w[17]),
        board_rev: b(w[18]),
    }
}

fn store_settings(s: &Settings) {
    for (i, w) in settings_to_words(s).into_iter().enumerate() {
        warm_set(W_SETTINGS + i, w);
    }
}

fn load_settings() -> Settings {
    let mut w = [0u32; SETTINGS_WORDS];
    for (i, slot) in w.iter_mut().enumerate() {
        *slot = warm_get(W_SETTINGS + i);
    }
    settings_from_words(&w)
}

/// The backup domain in the warm block.
struct WarmBackup;

impl BackupDomain for WarmBackup {
    fn load(&mut self) -> u32 {
        warm_get(W_BACKUP)
    }
    fn store(&mut self, word: u32) {
        warm_set(W_BACKUP, word);
    }
    fn erase_key_share(&mut self) {
        warm_set(W_KEY_ERASED, 1);
    }
}

// --- the vehicle ---------------------------------------------------------------------------------

/// The vehicle's levels as the harness set them, and a supply transient being played.
struct VehicleState {
    supply_mv: u16,
    nominal_mv: u16,
    /// `(until_ms, mv)` segments of a crank.
    transient: heapless::Deque<(u64, u16), 2>,
    tamper_until_ms: Option<u64>,
}

impl VehicleState {
    fn supply_now(&self) -> u16 {
        self.transient.front().map_or(self.supply_mv, |&(_, mv)| mv)
    }

    /// Expire transients and the tamper pulse; update the pins.
    fn tick(&mut self, now: u64) {
        while self
            .transient
            .front()
            .is_some_and(|&(until, _)| now >= until)
        {
            self.transient.pop_front();
        }
        if self.tamper_until_ms.is_some_and(|t| now >= t) {
            self.tamper_until_ms = None;
            TAMPER.store(false, Ordering::Relaxed);
        }
        SUPPLY_COUNTS.store(counts_for(self.supply_now()), Ordering::Relaxed);
    }

    fn apply(&mut self, now: u64, v: Vehicle) {
        match v {
            Vehicle::Ignition(on) => {
                IGNITION.store(on, Ordering::Relaxed);
                warm_set(W_IGNITION, u32::from(on));
            }
            Vehicle::Supply(mv) | Vehicle::LowBattery(mv) => {
                self.transient.clear();
                self.supply_mv = mv;
            }
            Vehicle::Crank {
                dip_mv,
                dip_ms,
                reduced_mv,
                reduced_ms,
            } => {
                self.transient.clear();
                let dip_end = now.saturating_add(dip_ms);
                let _ = self.transient.push_back((dip_end, dip_mv));
                let _ = self
                    .transient
                    .push_back((dip_end.saturating_add(reduced_ms), reduced_mv));
            }
            Vehicle::PowerFail => {
                self.transient.clear();
                self.supply_mv = 0;
            }
            Vehicle::PowerRestore => {
                self.transient.clear();
                self.supply_mv = self.nominal_mv;
            }
            Vehicle::Tamper => {
                TAMPER.store(true, Ordering::Relaxed);
                self.tamper_until_ms = Some(now.saturating_add(100));
            }
            Vehicle::Noise => {}
        }
        warm_set(W_SUPPLY, u32::from(self.supply_mv));
        self.tick(now);
    }
}

// --- the platform --------------------------------------------------------------------------------

struct Qemu {
    link: Uart,
    harness: Uart,
    lines: LineReader,
    board: QemuBoard,
    backup: WarmBackup,
    vehicle: VehicleState,
    hold: PowerHold,
    last_ms32: u32,
    ms: u64,
    max_step_cycles: u64,
    steps: u64,
    stats: LinkStats,
}

impl Qemu {
    fn say(&mut self, args: fmt::Arguments<'_>) {
        let _ = self.harness.write_fmt(args);
    }
}

impl Platform for Qemu {
    fn now_ms(&mut self) -> u64 {
        let ms32 = MILLIS.load(Ordering::Relaxed);
        self.ms = self
            .ms
            .saturating_add(u64::from(ms32.wrapping_sub(self.last_ms32)));
        self.last_ms32 = ms32;
        self.ms
    }

    fn cycles(&mut self) -> u64 {
        cycles_now()
    }

    fn link_read(&mut self, buf: &mut [u8]) -> usize {
        let mut n = 0;
        while n < buf.len() {
            match self.link.read() {
                Some(b) => {
                    buf[n] = b;
                    n += 1;
                }
                None => break,
            }
        }
        n
    }

    fn link_write(&mut self, bytes: &[u8]) {
        self.link.write(bytes);
    }

    fn sample(&mut self, host: Option<HostToMcu>) -> Inputs {
        self.board.sample(host)
    }

    fn apply(&mut self, now_ms: u64, out: &Outputs) {
        let held = self.hold.host_power(now_ms, out);
        if held != out.host_power {
            let mut o = out.clone();
            o.host_power = held;
            self.board.apply(now_ms, &o, &mut self.backup);
        } else {
            self.board.apply(now_ms, out, &mut self.backup);
        }
    }

    fn host_rail(&mut self) -> (bool, bool) {
        let rail = (
            HOST_POWER.load(Ordering::Relaxed),
            !HOST_RESET_N.load(Ordering::Relaxed),
        );
        if warm_get(W_HOST_POWER) != u32::from(rail.0) {
            warm_set(W_HOST_POWER, u32::from(rail.0));
        }
        rail
    }

    fn feed_watchdog(&mut self) {
        reg_write(WATCHDOG + WDOG_LOCK, WDOG_UNLOCK);
        reg_write(WATCHDOG + WDOG_INTCLR, 1);
        reg_write(WATCHDOG + WDOG_LOCK, 0);
    }

    fn wait(&mut self) {
        cortex_m::asm::wfi();
    }

    fn observe(&mut self, now_ms: u64, event: Event) {
        let _ = harness::write_event(&mut self.harness, now_ms, &event);
    }

    fn step_cycles(&mut self, cycles: u64) {
        self.steps = self.steps.saturating_add(1);
        self.max_step_cycles = self.max_step_cycles.max(cycles);
    }

    fn link_stats(&mut self, stats: LinkStats) {
        self.stats = stats;
    }

    fn poll_harness(&mut self, now: u64, sup: &Supervisor, rail: (bool, bool)) -> bool {
        self.vehicle.tick(now);
        let mut stepped = false;
        // A handful of bytes per pass: the supervisor's tick is never starved by a chatty harness.
        for _ in 0..64 {
            let Some(b) = self.harness.read() else { break };
            let cmd = match self.lines.push(b) {
                None => continue,
                Some(Line::Bad) => Err("line too long or not UTF-8"),
                Some(Line::Text(text)) => harness::parse(text),
            };
            match cmd {
                Ok(None) => {}
                Err(e) => self.say(format_args!("error {e}\n")),
                Ok(Some(Command::Vehicle(v))) => {
                    if v == Vehicle::Noise {
                        // On the wire, as a noisy cable would put it; only to a host that is
                        // powered and out of reset, as the simulated board does.
                        if rail.0 && !rail.1 {
                            self.link.write(&harness::LINE_NOISE);
                        }
                    } else {
                        self.vehicle.apply(now, v);
                    }
                    self.say(format_args!("t={now} vehicle {v}\n"));
                    stepped = true;
                    // One step per command, as the simulated board does.
                    break;
                }
                Ok(Some(Command::Status)) => {
                    let s = sup.status(now);
                    self.say(format_args!(
                        "t={now} status state={:?} ignition={} supply_mv={} faults={:#04x} \
                         power_cycles_last_hour={} last_shutdown={:?} host_power={}\n",
                        s.state,
                        s.ignition_on,
                        s.supply_mv,
                        s.faults.bits(),
                        s.power_cycles_last_hour,
                        s.last_shutdown,
                        rail.0
                    ));
                }
                Ok(Some(Command::Stats)) => {
                    let (max, steps, bad, stack) = (
                        self.max_step_cycles,
                        self.steps,
                        self.stats.bad_frames,
                        stack_used(),
                    );
                    self.say(format_args!(
                        "t={now} stats max_step_cycles={max} steps={steps} bad_frames={bad} \
                         core_hz={CORE_HZ} stack_used={stack} key_share_erased={}\n",
                        warm_get(W_KEY_ERASED) != 0
                    ));
                }
                Ok(Some(Command::Panic)) => panic!("panic requested by the harness"),
                Ok(Some(Command::Hang)) => {
                    self.say(format_args!(
                        "t={now} hang: the loop stops feeding the watchdog\n"
                    ));
                    loop {
                        cortex_m::asm::wfi();
                    }
                }
                Ok(Some(Command::Set(..) | Command::Start)) => {
                    self.say(format_args!("error already started\n"));
                }
            }
        }
        stepped
    }
}

/// Bytes of stack ever used: the painted words (cortex-m-rt's `paint-stack`) no longer intact.
fn stack_used() -> u32 {
    extern "C" {
        static _stack_end: u32;
        static _stack_start: u32;
    }
    let start = core::ptr::addr_of!(_stack_end) as usize;
    let top = core::ptr::addr_of!(_stack_start) as usize;
    let mut p = start;
    while p < top {
        // SAFETY: `p` is a word-aligned address between the linker's `_stack_end` and
        // `_stack_start`, i.e. inside the stack region of RAM; reading it has no side effect.
        let w = unsafe { core::ptr::read_volatile(p as *const u32) };
        if w != cortex_m_rt::STACK_PAINT_VALUE {
            break;
        }
        p += 4;
    }
    u32::try_from(top - p).unwrap_or(u32::MAX)
}

// --- start-up ------------------------------------------------------------------------------------

/// Before `start`: `set` lines change `settings`; `start` validates them.
fn wait_for_start(harness: &mut Uart, lines: &mut LineReader, mut settings: Settings) -> Config {
    loop {
        reg_write(WATCHDOG + WDOG_LOCK, WDOG_UNLOCK);
        reg_write(WATCHDOG + WDOG_INTCLR, 1);
        reg_write(WATCHDOG + WDOG_LOCK, 0);
        let Some(b) = harness.read() else {
            cortex_m::asm::wfi();
            continue;
        };
        let cmd = match lines.push(b) {
            None => continue,
            Some(Line::Bad) => Err("line too long or not UTF-8"),
            Some(Line::Text(text)) => harness::parse(text),
        };
        match cmd {
            Ok(None) => {}
            Ok(Some(Command::Set(key, value))) => match key.apply(&mut settings, value) {
                Ok(()) => {}
                Err(e) => {
                    let _ = writeln!(harness, "error {e}");
                }
            },
            Ok(Some(Command::Start)) => match Config::new(settings) {
                Ok(cfg) => return cfg,
                Err(e) => {
                    let _ = writeln!(harness, "error invalid settings: {e:?}");
                }
            },
            Ok(Some(_)) => {
                let _ = writeln!(harness, "error not started (set ..., then start)");
            }
            Err(e) => {
                let _ = writeln!(harness, "error {e}");
            }
        }
    }
}

/// The image's defaults on this board: revision B's settings, as on the real board.
fn default_settings() -> Settings {
    Settings {
        board_rev: harness::REV_B.0,
        hold_up_budget_ms: harness::REV_B.1,
        converter_min_mv: 6_000,
        ..Settings::DEFAULT_12V
    }
}

/// Start-up on the QEMU board.
pub fn main() -> ! {
    let Some(mut cp) = cortex_m::Peripherals::take() else {
        // Only reachable if start-up ran twice; reset rather than run without peripherals.
        cortex_m::peripheral::SCB::sys_reset();
    };
    let link = Uart(UART0);
    let mut harness_uart = Uart(UART1);
    link.init();
    harness_uart.init();

    cp.SYST.set_clock_source(SystClkSource::Core);
    cp.SYST.set_reload(TICKS_PER_MS - 1);
    cp.SYST.clear_current();
    cp.SYST.enable_counter();
    cp.SYST.enable_interrupt();

    // The MCU watchdog: 0.5 s to the NMI, 0.5 s more to the reset.
    reg_write(WATCHDOG + WDOG_LOCK, WDOG_UNLOCK);
    reg_write(WATCHDOG + WDOG_LOAD, CORE_HZ / 2);
    reg_write(WATCHDOG + WDOG_CTRL, 0b11);
    reg_write(WATCHDOG + WDOG_LOCK, 0);

    // SAFETY: unmasking the two UART receive interrupts; their handler (`DefaultHandler`) only
    // clears the UARTs' interrupt flags and shares no data with the main loop.
    unsafe {
        cp.NVIC.iser[0].write((1 << IRQ_UART0_RX) | (1 << IRQ_UART1_RX));
    }

    let warm = warm_valid();
    let reason = if warm {
        warm_get(W_REASON)
    } else {
        REASON_NONE
    };
    let reason_name = match (warm, reason) {
        (false, _) => "cold",
        (true, REASON_PANIC) => "panic",
        (true, _) => "warm",
    };
    let _ = writeln!(
        harness_uart,
        "boot fw={}.{}.{} board={BOARD_NAME} reset={reason_name}",
        FW_VERSION.major, FW_VERSION.minor, FW_VERSION.patch
    );
    let mut lines = LineReader::default();
    let (cfg, persisted, was_powered) = if warm {
        let settings = load_settings();
        match Config::new(settings) {
            Ok(cfg) => (
                cfg,
                Persisted::from_word(warm_get(W_BACKUP)),
                warm_get(W_HOST_POWER) != 0,
            ),
            Err(_) => {
                let _ = writeln!(
                    harness_uart,
                    "error warm settings invalid; waiting for start"
                );
                (
                    wait_for_start(&mut harness_uart, &mut lines, default_settings()),
                    Persisted::from_word(warm_get(W_BACKUP)),
                    false,
                )
            }
        }
    } else {
        let cfg = wait_for_start(&mut harness_uart, &mut lines, default_settings());
        // A fresh QEMU board is a workshop-provisioned one: latch clear, key share present.
        for i in 0..WARM_WORDS {
            warm_set(i, 0);
        }
        warm_set(W_BACKUP, Persisted::default().to_word());
        (cfg, Persisted::default(), false)
    };
    store_settings(cfg.settings());
    warm_set(W_REASON, REASON_NONE);
    warm_set(W_MAGIC, WARM_MAGIC);

    // The vehicle's levels outlive an MCU reset.
    let ignition = warm && warm_get(W_IGNITION) != 0;
    let supply_mv = if warm {
        u16::try_from(warm_get(W_SUPPLY)).unwrap_or(0)
    } else {
        12_600
    };
    IGNITION.store(ignition, Ordering::Relaxed);
    let vehicle = VehicleState {
        supply_mv,
        nominal_mv: 13_800,
        transient: heapless::Deque::new(),
        tamper_until_ms: None,
    };
    SUPPLY_COUNTS.store(counts_for(supply_mv), Ordering::Relaxed);

    let now = 0;
    let hold = PowerHold::new(was_powered, now, cfg.settings());
    if was_powered {
        HOST_POWER.store(true, Ordering::Relaxed);
    }
    let mut app = App::new(cfg, persisted);
    app.set_rail((was_powered, false));
    let board = Board::new(
        VirtualIn(&IGNITION),
        VirtualIn(&TAMPER),
        VirtualOut(&HOST_POWER),
        VirtualOut(&HOST_RESET_N),
        FpgaLed(0),
        FpgaLed(1),
        VirtualOut(&LED_FAULT),
        VirtualAdc,
        DIVIDER,
    );
    let _ = writeln!(harness_uart, "started");
    let mut qemu = Qemu {
        link,
        harness: harness_uart,
        lines,
        board,
        backup: WarmBackup,
        vehicle,
        hold,
        last_ms32: MILLIS.load(Ordering::Relaxed),
        ms: 0,
        max_step_cycles: 0,
        steps: 0,
        stats: LinkStats::default(),
    };
    app.run(&mut qemu)
}

static PANICKING: AtomicBool = AtomicBool::new(false);

/// The panic handler's board part: say why on the harness UART, keep the host rail as it is (the
/// warm block remembers it, and start-up holds it), leave the key share alone, and reset.
pub fn on_panic(info: &core::panic::PanicInfo<'_>) -> ! {
    if !PANICKING.swap(true, Ordering::SeqCst) {
        let mut h = Uart(UART1);
        let _ = writeln!(h, "panic {}", info.message());
        if warm_valid() {
            warm_set(W_REASON, REASON_PANIC);
        }
    }
    cortex_m::peripheral::SCB::sys_reset()
}
