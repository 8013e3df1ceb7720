//! The real board: board revision B's STM32G474 (Cortex-M4F) through `stm32g4xx-hal`, with the
//! pin map of `hw::pins::REV_B` (the one source of truth; `hw/tests/it/pins.rs` pins this file's
//! choices to it).
//!
//! | signal | pin | mode |
//! | --- | --- | --- |
//! | ignition sense (opto-coupler, high = on) | PB0 | input, pull-down |
//! | enclosure tamper (RTC_TAMP1, high = open) | PC13 | input, pull-up (switch to ground while closed) |
//! | host buck enable (high = powered) | PB1 | push-pull output |
//! | host reset (active low) | PB2 | open-drain output |
//! | LEDs power / link / fault | PC6 / PC7 / PC8 | push-pull outputs |
//! | input-voltage sense | PA0 = ADC1_IN1 | analog, 100 kΩ / 10 kΩ divider |
//! | host link | USART2 TX PA2 / RX PA3, AF7 | 115 200 Bd 8N1 |
//!
//! Clock: HSI16 (16 MHz; the supervisor needs no more), SysTick at 1 kHz for `now_ms`. The
//! independent watchdog (IWDG, LSI) resets the MCU if the loop stalls for a second. The backup
//! domain is TAMP's battery-backed registers: BKP0R the persisted word
//! (`firmware::tamper::Persisted`), BKP1R–BKP4R the MCU's 128-bit key share (erased on tamper),
//! BKP5R whether the host rail was on (kept through an MCU reset, see `app::PowerHold`).
//!
//! Built in CI (`--features g474`), not run there: there is no STM32G4 model in QEMU.

use crate::app::{App, Platform, PowerHold};
use core::convert::Infallible;
use core::sync::atomic::{AtomicU32, Ordering};
use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::exception;
use embedded_hal::digital::StatefulOutputPin;
use embedded_io::{Read, ReadReady, Write, WriteReady};
use firmware::board::{AdcChannel, Board, Divider};
use firmware::proto::HostToMcu;
use firmware::supervisor::{Inputs, Outputs};
use firmware::tamper::{BackupDomain, Persisted};
use firmware::{Config, Settings};
use hal::adc::config::{AdcConfig, SampleTime};
use hal::adc::{Adc, AdcClaim, AdcCommonExt, Configured};
use hal::gpio::{Analog, Input, OpenDrain, Output, PushPull};
use hal::gpio::{PA0, PA2, PA3, PB0, PB1, PB2, PC13, PC6, PC7, PC8};
use hal::independent_watchdog::IndependentWatchdog;
use hal::prelude::*;
use hal::pwr::PwrExt;
use hal::rcc::Config as RccConfig;
use hal::serial::{FullConfig, Serial};
use hal::stm32::{self, ADC1, TAMP, USART2};
use hal::time::ExtU32;
use stm32g4xx_hal as hal;

/// Core clock: HSI16.
pub const CORE_HZ: u32 = 16_000_000;
const TICKS_PER_MS: u32 = CORE_HZ / 1_000;

/// The input-sense divider of `hw::pins::SUPPLY_DIVIDER`.
const DIVIDER: Divider = Divider {
    vref_mv: 3_300,
    full_scale: 4_095,
    r_top_ohm: 100_000,
    r_bottom_ohm: 10_000,
};

/// Backup register indices.
const BKP_PERSISTED: usize = 0;
const BKP_KEY_SHARE: core::ops::Range<usize> = 1..5;
const BKP_HOST_POWER: usize = 5;

static MILLIS: AtomicU32 = AtomicU32::new(0);

#[exception]
fn SysTick() {
    MILLIS.fetch_add(1, Ordering::Relaxed);
}

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

/// The supply-sense channel: ADC1 on PA0.
pub struct SupplySense {
    adc: Adc<ADC1, Configured>,
    pin: PA0<Analog>,
}

impl AdcChannel for SupplySense {
    type Error = Infallible;
    fn read_counts(&mut self) -> Result<u16, Infallible> {
        Ok(self.adc.convert(&self.pin, SampleTime::Cycles_247_5))
    }
}

/// TAMP's backup registers.
struct Backup(TAMP);

impl Backup {
    fn get(&self, i: usize) -> u32 {
        self.0.bkpr(i).read().bits()
    }
    fn set(&mut self, i: usize, v: u32) {
        // SAFETY: a backup register holds any 32-bit value.
        self.0.bkpr(i).write(|w| unsafe { w.bits(v) });
    }
}

impl BackupDomain for Backup {
    fn load(&mut self) -> u32 {
        self.get(BKP_PERSISTED)
    }
    fn store(&mut self, word: u32) {
        self.set(BKP_PERSISTED, word);
    }
    fn erase_key_share(&mut self) {
        for i in BKP_KEY_SHARE {
            self.set(i, 0);
        }
    }
}

type G474Board = Board<
    PB0<Input>,
    PC13<Input>,
    PB1<Output<PushPull>>,
    PB2<Output<OpenDrain>>,
    PC6<Output<PushPull>>,
    PC7<Output<PushPull>>,
    PC8<Output<PushPull>>,
    SupplySense,
>;

struct G474 {
    link: Serial<USART2, PA2<hal::gpio::AF7>, PA3<hal::gpio::AF7>>,
    board: G474Board,
    backup: Backup,
    watchdog: IndependentWatchdog,
    hold: PowerHold,
    last_ms32: u32,
    ms: u64,
}

impl Platform for G474 {
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
        match self.link.read_ready() {
            Ok(true) => self.link.read(buf).unwrap_or_default(),
            Ok(false) => 0,
            // Overrun, framing or noise: the byte is lost, the frame decoder resynchronises.
            Err(_) => 0,
        }
    }

    fn link_write(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        let mut spins = 0u32;
        while !rest.is_empty() && spins < 100_000 {
            if !matches!(self.link.write_ready(), Ok(true)) {
                spins += 1;
                continue;
            }
            match self.link.write(rest) {
                Ok(n) => rest = &rest[n.min(rest.len())..],
                Err(_) => spins += 1,
            }
        }
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
        let powered = StatefulOutputPin::is_set_high(&mut self.board.host_power).unwrap_or(false);
        let reset = StatefulOutputPin::is_set_low(&mut self.board.host_reset).unwrap_or(false);
        if self.backup.get(BKP_HOST_POWER) != u32::from(powered) {
            self.backup.set(BKP_HOST_POWER, u32::from(powered));
        }
        (powered, reset)
    }

    fn feed_watchdog(&mut self) {
        self.watchdog.feed();
    }

    fn wait(&mut self) {
        cortex_m::asm::wfi();
    }
}

/// The settings of board revision B.
fn settings() -> Settings {
    Settings {
        board_rev: 2,
        hold_up_budget_ms: 10_000,
        converter_min_mv: 6_000,
        ..Settings::DEFAULT_12V
    }
}

/// Start-up on the real board.
pub fn main() -> ! {
    let (Some(dp), Some(mut cp)) = (stm32::Peripherals::take(), cortex_m::Peripherals::take())
    else {
        cortex_m::peripheral::SCB::sys_reset();
    };
    // Why we started: a software reset (the panic handler) or the IWDG leaves the host rail as it
    // was; a power-on starts from the supervisor's `Off`.
    let csr = dp.RCC.csr().read();
    let warm = csr.sftrstf().bit_is_set() || csr.iwdgrstf().bit_is_set();
    dp.RCC.csr().modify(|_, w| w.rmvf().set_bit());
    // The backup domain: TAMP's APB clock and write access.
    dp.RCC
        .apb1enr1()
        .modify(|_, w| w.pwren().set_bit().rtcapben().set_bit());
    dp.PWR.cr1().modify(|_, w| w.dbp().set_bit());

    let pwr = dp.PWR.constrain().freeze();
    let mut rcc = dp.RCC.freeze(RccConfig::hsi(), pwr);

    let mut watchdog = IndependentWatchdog::new(dp.IWDG);
    watchdog.start(1_000_u32.millis());

    let gpioa = dp.GPIOA.split(&mut rcc);
    let gpiob = dp.GPIOB.split(&mut rcc);
    let gpioc = dp.GPIOC.split(&mut rcc);

    let backup = Backup(dp.TAMP);
    let was_powered = warm && backup.get(BKP_HOST_POWER) != 0;
    let mut host_power = gpiob.pb1.into_push_pull_output();
    if was_powered {
        host_power.set_high();
    }
    let mut host_reset = gpiob.pb2.into_open_drain_output();
    host_reset.set_high();

    let mut delay = BusyDelay;
    let adc12 = dp.ADC12_COMMON.claim(Default::default(), &mut rcc);
    let adc = adc12.claim_and_configure(dp.ADC1, AdcConfig::default(), &mut delay);
    let supply = SupplySense {
        adc,
        pin: gpioa.pa0.into_analog(),
    };

    let tx = gpioa.pa2.into_alternate();
    let rx = gpioa.pa3.into_alternate();
    let Ok(link) = dp.USART2.usart(
        tx,
        rx,
        FullConfig::default().baudrate(115_200.bps()),
        &mut rcc,
    ) else {
        // A baud rate the clock cannot make: nothing to talk over; the watchdog resets us.
        loop {
            cortex_m::asm::wfi();
        }
    };

    cp.SYST.set_clock_source(SystClkSource::Core);
    cp.SYST.set_reload(TICKS_PER_MS - 1);
    cp.SYST.clear_current();
    cp.SYST.enable_counter();
    cp.SYST.enable_interrupt();

    let board = Board::new(
        gpiob.pb0.into_pull_down_input(),
        gpioc.pc13.into_pull_up_input(),
        host_power,
        host_reset,
        gpioc.pc6.into_push_pull_output(),
        gpioc.pc7.into_push_pull_output(),
        gpioc.pc8.into_push_pull_output(),
        supply,
        DIVIDER,
    );
    let mut backup = backup;
    let persisted = Persisted::from_word(backup.load());
    let s = settings();
    let cfg = match Config::new(s) {
        Ok(c) => c,
        Err(_) => loop {
            // Unreachable with the constant settings above (a host test checks them).
            cortex_m::asm::wfi();
        },
    };
    let mut app = App::new(cfg, persisted);
    app.set_rail((was_powered, false));
    let mut p = G474 {
        link,
        board,
        backup,
        watchdog,
        hold: PowerHold::new(was_powered, 0, &s),
        last_ms32: MILLIS.load(Ordering::Relaxed),
        ms: 0,
    };
    app.run(&mut p)
}

/// A busy-wait delay for the ADC's start-up (SysTick is the clock, not a delay).
struct BusyDelay;

impl embedded_hal::delay::DelayNs for BusyDelay {
    fn delay_ns(&mut self, ns: u32) {
        let cycles = u64::from(ns) * u64::from(CORE_HZ) / 1_000_000_000;
        cortex_m::asm::delay(u32::try_from(cycles).unwrap_or(u32::MAX).max(1));
    }
}

/// The panic handler's board part: drive the host's power enable high (PB1; through the reset the
/// pin floats and the board's pull-up on the buck's EN holds it, `hw/README.md`), leave the key
/// share alone, reset.
pub fn on_panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // SAFETY: a single write to GPIOB's bit set/reset register sets PB1 high and touches no
    // other pin; nothing else runs after a panic.
    unsafe {
        (*stm32::GPIOB::ptr()).bsrr().write(|w| w.bits(1 << 1));
    }
    cortex_m::peripheral::SCB::sys_reset()
}
