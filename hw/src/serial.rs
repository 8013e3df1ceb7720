//! Serial plumbing on Linux: open a tty in raw mode, and create pseudo-terminals for the
//! simulated board. All system calls go through `rustix`, so this crate needs no `unsafe`.

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::fs::{fcntl_getfl, fcntl_setfl, open, Mode, OFlags};
use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
use rustix::termios::{
    tcflush, tcgetattr, tcsetattr, OptionalActions, QueueSelector, SpecialCodeIndex,
};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Put a tty in raw mode (8N1, no echo, no line discipline) at `baud`, with reads that return
/// after at most 100 ms so reader threads can notice shutdown.
pub fn make_raw(fd: impl AsFd, baud: Option<u32>) -> io::Result<()> {
    let mut t = tcgetattr(&fd)?;
    t.make_raw();
    t.special_codes[SpecialCodeIndex::VMIN] = 0;
    t.special_codes[SpecialCodeIndex::VTIME] = 1;
    if let Some(baud) = baud {
        t.set_speed(baud)?;
    }
    tcsetattr(&fd, OptionalActions::Now, &t)?;
    Ok(())
}

/// Open a serial device for the supervisor link: raw mode, stale input discarded.
pub fn open_tty(path: &Path, baud: Option<u32>) -> io::Result<File> {
    let fd = open(
        path,
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    make_raw(&fd, baud)?;
    tcflush(&fd, QueueSelector::IFlush)?;
    Ok(File::from(fd))
}

/// A pseudo-terminal whose master side the simulated board drives; the daemon opens
/// [`Pty::path`] as if it were the supervisor's UART.
#[derive(Debug)]
pub struct Pty {
    master: File,
    /// Kept open so the master never sees EIO while no client is attached, and so the raw
    /// termios settings persist between clients.
    _slave: File,
    path: PathBuf,
}

impl Pty {
    /// Create a pty in raw mode.
    pub fn open() -> io::Result<Self> {
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
        grantpt(&master)?;
        unlockpt(&master)?;
        let name = ptsname(&master, Vec::new())?;
        let path = PathBuf::from(name.to_string_lossy().into_owned());
        let slave = open(
            &path,
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        make_raw(&slave, None)?;
        let flags = fcntl_getfl(&master)?;
        fcntl_setfl(&master, flags | OFlags::NONBLOCK)?;
        Ok(Self {
            master: File::from(master),
            _slave: File::from(slave),
            path,
        })
    }

    /// The slave device path (e.g. `/dev/pts/3`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Split into the master-side port for the board (the slave is kept open by the port).
    pub fn into_port(self) -> PtyPort {
        PtyPort { pty: self }
    }
}

/// A byte port with a read timeout: what the simulated board's runner talks through.
pub trait Port: Send {
    /// Read what is available, waiting at most `timeout`; `Ok(0)` means nothing arrived.
    fn read_timeout(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize>;
    /// Write all bytes (a port may drop bytes nobody reads, like a UART with no listener).
    fn write_bytes(&mut self, bytes: &[u8]) -> io::Result<()>;
}

/// The master side of a [`Pty`].
#[derive(Debug)]
pub struct PtyPort {
    pty: Pty,
}

impl PtyPort {
    /// The slave device path.
    pub fn path(&self) -> &Path {
        self.pty.path()
    }
}

impl Port for PtyPort {
    fn read_timeout(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
        let ts = Timespec {
            tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        let mut fds = [PollFd::new(&self.pty.master, PollFlags::IN)];
        match poll(&mut fds, Some(&ts)) {
            Ok(0) => return Ok(0),
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(0),
            Err(e) => return Err(e.into()),
        }
        match self.pty.master.read(buf) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(e) => Err(e),
        }
    }

    fn write_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self.pty.master.write_all(bytes) {
            Ok(()) => Ok(()),
            // Nobody is draining the slave side: drop, as a UART would.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }
}
