//! Pseudo-terminals: open a master/peer pair of a given size and change a
//! terminal's window size.
//!
//! The peer side is opened from the master with `TIOCGPTPEER`, so no path
//! lookup under `/dev/pts` is involved (it works with a private `devpts`
//! instance). Limits: Linux only; both descriptors are close-on-exec, the
//! caller hands the peer to a child explicitly (as its stdio).

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::pty::OpenptFlags;
use rustix::termios::Winsize;

/// A pseudo-terminal: the master side the agent reads and writes, and the
/// peer side a child gets as its terminal.
#[derive(Debug)]
pub struct Pty {
    pub master: OwnedFd,
    pub peer: OwnedFd,
}

/// Open a new pseudo-terminal of `rows` x `cols` cells.
pub fn open(rows: u16, cols: u16) -> io::Result<Pty> {
    let flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC;
    let master = rustix::pty::openpt(flags)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let peer = rustix::pty::ioctl_tiocgptpeer(&master, flags)?;
    set_window_size(&master, rows, cols)?;
    Ok(Pty { master, peer })
}

/// Set the window size of the terminal behind `fd` (`TIOCSWINSZ`); the
/// foreground process group gets `SIGWINCH`.
pub fn set_window_size<Fd: AsFd>(fd: Fd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    rustix::termios::tcsetwinsize(fd, ws)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_sets_the_size_and_resize_changes_it() {
        let pty = match open(24, 80) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("skipping: no pseudo-terminals here ({e})");
                return;
            }
        };
        let ws = rustix::termios::tcgetwinsize(&pty.peer).unwrap();
        assert_eq!((ws.ws_row, ws.ws_col), (24, 80));
        set_window_size(&pty.master, 50, 132).unwrap();
        let ws = rustix::termios::tcgetwinsize(&pty.peer).unwrap();
        assert_eq!((ws.ws_row, ws.ws_col), (50, 132));
        assert!(rustix::termios::isatty(&pty.peer));
    }
}
