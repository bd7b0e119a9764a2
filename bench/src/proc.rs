//! Server processes: spawning chatd or the baseline relay, waiting for their
//! `listening on` line, reading their memory, and stopping them for sure.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Raises this process's open-file limit to its hard limit; children
/// inherit it. Returns the new soft limit.
pub fn raise_nofile_limit() -> Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit")?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("setrlimit")?;
    }
    Ok(hard.max(soft))
}

/// A server process that is stopped (SIGTERM, then SIGKILL after a grace
/// period) when dropped, whatever happened.
#[derive(Debug)]
pub struct ServerProc {
    /// What it is, for messages.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// How long it took from spawn to its `listening on` line.
    pub startup: Duration,
    /// When it was spawned.
    pub spawned: Instant,
    child: Option<Child>,
    stderr_log: PathBuf,
}

/// How to start a server.
#[derive(Debug, Clone)]
pub struct Spawn {
    /// For messages.
    pub name: String,
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// The stdout line prefix before `<ip>:<port>`.
    pub ready_prefix: String,
    /// Where its stderr goes.
    pub stderr_log: PathBuf,
    /// How long to wait for the ready line.
    pub ready_timeout: Duration,
}

/// Why a server did not start.
#[derive(Debug)]
pub struct StartFailure {
    /// Its exit status, if it exited.
    pub status: Option<ExitStatus>,
    /// The tail of its stderr.
    pub stderr: String,
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(s) => write!(f, "exited ({s})")?,
            None => write!(f, "did not report ready")?,
        }
        write!(f, "; stderr: {}", self.stderr.trim())
    }
}

impl std::error::Error for StartFailure {}

impl Spawn {
    /// Starts the server and waits for its ready line.
    ///
    /// It runs under `setpriv --pdeathsig KILL` when `setpriv` exists, so it
    /// dies with the harness even if the harness is killed outright.
    pub fn start(&self) -> Result<ServerProc, StartFailure> {
        let fail = |status, stderr| StartFailure { status, stderr };
        let stderr = std::fs::File::create(&self.stderr_log)
            .map_err(|e| fail(None, format!("creating {}: {e}", self.stderr_log.display())))?;
        let mut cmd = self.command();
        cmd.stdout(Stdio::piped()).stderr(stderr);
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| fail(None, format!("spawning {}: {e}", self.program.display())))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        let prefix = self.ready_prefix.clone();
        // Reads the ready line, then keeps draining stdout so the server
        // never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            let mut sent = false;
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                if !sent {
                    if let Some(addr) = line.trim_end().strip_prefix(&prefix) {
                        sent = tx.send(addr.trim().to_string()).is_ok();
                    }
                }
                line.clear();
            }
            let mut sink = Vec::new();
            let _ = r.read_to_end(&mut sink);
        });
        let mut proc = ServerProc {
            name: self.name.clone(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            startup: Duration::ZERO,
            spawned: started,
            child: Some(child),
            stderr_log: self.stderr_log.clone(),
        };
        let deadline = started + self.ready_timeout;
        loop {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(addr) => {
                    proc.startup = started.elapsed();
                    proc.addr = addr.parse().map_err(|_| {
                        fail(None, format!("unreadable ready line address `{addr}`"))
                    })?;
                    return Ok(proc);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed without the line: it is exiting.
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            let exited = proc
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() >= deadline {
                let tail = proc.stderr_tail();
                drop(proc); // stops it if it still runs
                return Err(fail(exited, tail));
            }
        }
    }
}

impl Spawn {
    /// The command, under `setpriv --pdeathsig KILL` when it exists.
    fn command(&self) -> Command {
        let setpriv = Path::new("/usr/bin/setpriv");
        let mut cmd = if setpriv.exists() {
            let mut c = Command::new(setpriv);
            c.args(["--pdeathsig", "KILL", "--"]).arg(&self.program);
            c
        } else {
            Command::new(&self.program)
        };
        cmd.args(&self.args).stdin(Stdio::null());
        cmd
    }

    /// Starts a server that prints no ready line of its own (ngircd) and
    /// waits until it accepts a connection on `addr`. Its stdout and
    /// stderr both go to the stderr log; `ready_prefix` is not used.
    pub fn start_accepting(&self, addr: SocketAddr) -> Result<ServerProc, StartFailure> {
        let fail = |status, stderr| StartFailure { status, stderr };
        let log = std::fs::File::create(&self.stderr_log)
            .map_err(|e| fail(None, format!("creating {}: {e}", self.stderr_log.display())))?;
        let log2 = log
            .try_clone()
            .map_err(|e| fail(None, format!("sharing the log: {e}")))?;
        let mut cmd = self.command();
        cmd.stdout(log).stderr(log2);
        let started = Instant::now();
        let child = cmd
            .spawn()
            .map_err(|e| fail(None, format!("spawning {}: {e}", self.program.display())))?;
        let mut proc = ServerProc {
            name: self.name.clone(),
            addr,
            startup: Duration::ZERO,
            spawned: started,
            child: Some(child),
            stderr_log: self.stderr_log.clone(),
        };
        let deadline = started + self.ready_timeout;
        loop {
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                proc.startup = started.elapsed();
                return Ok(proc);
            }
            let exited = proc
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() >= deadline {
                let tail = proc.stderr_tail();
                drop(proc);
                return Err(fail(exited, tail));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl ServerProc {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The last 2000 bytes of its stderr.
    pub fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr_log).unwrap_or_default();
        let start = text.len().saturating_sub(2000);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        text[start..].to_string()
    }

    /// Its memory now, from `/proc/<pid>/status`.
    pub fn memory(&self) -> Result<Memory> {
        Memory::of(self.pid())
    }

    /// Whether it is still running.
    #[cfg(test)]
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGTERM, then waits up to `grace` for it to exit; SIGKILL after.
    /// Returns its exit status and how long the shutdown took.
    pub fn stop(&mut self, grace: Duration) -> Result<(ExitStatus, Duration)> {
        let Some(mut child) = self.child.take() else {
            bail!("{} already stopped", self.name);
        };
        let started = Instant::now();
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(0));
        if let Ok(Some(status)) = child.try_wait() {
            return Ok((status, Duration::ZERO));
        }
        let _ = kill(pid, Signal::SIGTERM);
        while started.elapsed() < grace {
            if let Some(status) = child.try_wait()? {
                return Ok((status, started.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let status = child.wait()?;
        Err(anyhow!(
            "{} did not exit within {grace:?} of SIGTERM and was killed ({status})",
            self.name
        ))
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop(Duration::from_secs(5));
        }
    }
}

/// A process's memory, in KiB, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    /// Resident set size now (VmRSS).
    pub rss_kib: u64,
    /// Peak resident set size (VmHWM).
    pub hwm_kib: u64,
}

impl Memory {
    /// Reads `/proc/<pid>/status`.
    pub fn of(pid: u32) -> Result<Memory> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        Memory::parse(&text).ok_or_else(|| anyhow!("no VmRSS/VmHWM in /proc/{pid}/status"))
    }

    /// Parses the text of a `/proc/<pid>/status` file.
    pub fn parse(status: &str) -> Option<Memory> {
        let field = |name: &str| -> Option<u64> {
            let line = status.lines().find(|l| l.starts_with(name))?;
            line[name.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        };
        Some(Memory {
            rss_kib: field("VmRSS:")?,
            hwm_kib: field("VmHWM:")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_status() {
        let text = "Name:\tchatd\nVmPeak:\t  100 kB\nVmHWM:\t    5120 kB\nVmRSS:\t    4096 kB\n";
        assert_eq!(
            Memory::parse(text),
            Some(Memory {
                rss_kib: 4096,
                hwm_kib: 5120
            })
        );
        assert_eq!(Memory::parse("Name:\tx\n"), None);
    }

    #[test]
    fn reads_own_memory() {
        let m = Memory::of(std::process::id()).unwrap();
        assert!(m.rss_kib > 0 && m.hwm_kib >= m.rss_kib);
    }

    #[test]
    fn a_server_that_never_gets_ready_is_reported_and_stopped() {
        let dir = std::env::temp_dir().join(format!("chat-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let spawn = Spawn {
            name: "sh".into(),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "echo nope >&2; exit 2".into()],
            ready_prefix: "x listening on ".into(),
            stderr_log: dir.join("sh.log"),
            ready_timeout: Duration::from_secs(5),
        };
        let e = spawn.start().unwrap_err();
        assert_eq!(e.status.and_then(|s| s.code()), Some(2));
        assert!(e.stderr.contains("nope"));
        let spawn = Spawn {
            args: vec![
                "-c".into(),
                "echo 'x listening on 127.0.0.1:9'; exec sleep 30".into(),
            ],
            ..spawn
        };
        let mut p = spawn.start().unwrap();
        assert_eq!(p.addr.port(), 9);
        assert!(p.is_running());
        let (status, took) = p.stop(Duration::from_secs(5)).unwrap();
        assert!(!status.success());
        assert!(took < Duration::from_secs(5));
        std::fs::remove_dir_all(&dir).ok();
    }
}
