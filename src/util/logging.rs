//! Logging in nats-server's format: `[pid] 2019/12/04 20:40:40.429359 [INF] message`, on
//! standard error, in a log file (reopened on SIGUSR1 for logrotate; rotated by size with
//! `logfile_size_limit`, as nats-server 2.9 does), or to syslog (`syslog`, `remote_syslog`,
//! see `syslog.rs`). Levels: INF, WRN, ERR always; DBG with debug; TRC with trace. Timestamps
//! can be turned off (`logtime: false`).

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// Where log lines go. The lock is held for one line; logging is never on the data path
/// except at debug/trace levels.
enum Sink {
    Stderr,
    File {
        path: PathBuf,
        file: File,
        /// Bytes in the file, and the size at which it is rotated (0: never).
        written: u64,
        limit: u64,
    },
    Syslog(super::syslog::Syslog),
}

struct NatsLogger {
    pid: u32,
    logtime: bool,
    sink: Mutex<Sink>,
    /// Most verbose level of the NATS side (`-D`, `-V`) and of the streaming side (`-SD`,
    /// `-SV`): the reference turns them on separately.
    nats: AtomicUsize,
    stan: AtomicUsize,
}

/// What is enabled at debug and trace level, for each side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Levels {
    pub nats_debug: bool,
    pub nats_trace: bool,
    pub stan_debug: bool,
    pub stan_trace: bool,
}

impl Levels {
    fn nats(self) -> LevelFilter {
        level_for(self.nats_debug, self.nats_trace)
    }

    fn stan(self) -> LevelFilter {
        level_for(self.stan_debug, self.stan_trace)
    }

    fn max(self) -> LevelFilter {
        self.nats().max(self.stan())
    }
}

/// Streaming-side lines: the shards crate and the streaming front (`stanza::stan`).
fn is_streaming(target: &str) -> bool {
    target.starts_with("shards") || target.starts_with("stanza::stan") || target == "stan"
}

fn filter_from(n: usize) -> LevelFilter {
    match n {
        5 => LevelFilter::Trace,
        4 => LevelFilter::Debug,
        _ => LevelFilter::Info,
    }
}

static LOGGER: OnceLock<&'static NatsLogger> = OnceLock::new();

impl Log for NatsLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        if metadata.level() <= Level::Info {
            return true;
        }
        let side = if is_streaming(metadata.target()) {
            &self.stan
        } else {
            &self.nats
        };
        metadata.level() <= filter_from(side.load(Ordering::Relaxed))
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut sink = match self.sink.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let tag = match record.level() {
            Level::Error => "ERR",
            Level::Warn => "WRN",
            Level::Info => "INF",
            Level::Debug => "DBG",
            Level::Trace => "TRC",
        };
        let line = if self.logtime {
            format!(
                "[{}] {} [{}] {}\n",
                self.pid,
                timestamp(SystemTime::now()),
                tag,
                record.args()
            )
        } else {
            format!("[{}] [{}] {}\n", self.pid, tag, record.args())
        };
        match &mut *sink {
            Sink::Stderr => {
                let _ = std::io::stderr().lock().write_all(line.as_bytes());
            }
            Sink::File {
                path,
                file,
                written,
                limit,
            } => {
                if file.write_all(line.as_bytes()).is_ok() {
                    *written += line.len() as u64;
                }
                if *limit > 0 && *written >= *limit {
                    rotate(path, file, written);
                }
            }
            Sink::Syslog(syslog) => {
                syslog.send(record.level(), &format!("[{tag}] {}", record.args()))
            }
        }
    }

    fn flush(&self) {}
}

fn level_for(debug: bool, trace: bool) -> LevelFilter {
    if trace {
        LevelFilter::Trace
    } else if debug {
        LevelFilter::Debug
    } else {
        LevelFilter::Info
    }
}

fn open_log(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Moves a full log file aside as `<file>.<YYYY.MM.DD.hh.mm.ss.nanos>` (nats-server's name for
/// the backup) and starts a new one, which says where the old lines went. The log path never
/// goes missing while this runs (a reader or a tail sees the old file or the new one): the full
/// file gets its backup name as a second link, and the new file, written under a temporary
/// name, replaces it with one rename. A failure keeps writing to the current file and is
/// reported on standard error.
fn rotate(path: &Path, file: &mut File, written: &mut u64) {
    let now = SystemTime::now();
    let backup = with_suffix(path, &backup_suffix(now));
    let line = format!(
        "[{}] {} [INF] Rotated log, backup saved as {}\n",
        std::process::id(),
        timestamp(now),
        backup.display()
    );
    match swap_in_fresh_log(path, &backup, line.as_bytes()) {
        Ok(fresh) => {
            *written = line.len() as u64;
            *file = fresh;
        }
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "stanza: cannot rotate log file {}: {e}",
                path.display()
            );
            *written = 0;
        }
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}

/// Links the full log to `backup`, then renames a new file that starts with `first_line` over
/// `path`. Where links are not supported the full file is renamed instead (the path is then
/// missing for the moment between the two renames).
fn swap_in_fresh_log(path: &Path, backup: &Path, first_line: &[u8]) -> std::io::Result<File> {
    if std::fs::hard_link(path, backup).is_err() {
        std::fs::rename(path, backup)?;
        let mut fresh = open_log(path)?;
        fresh.write_all(first_line)?;
        return Ok(fresh);
    }
    let staging = with_suffix(path, "rotating");
    let staged = (|| {
        // A staging file left by a crash mid-rotation holds nothing worth keeping.
        let _ = std::fs::remove_file(&staging);
        let mut fresh = open_log(&staging)?;
        fresh.write_all(first_line)?;
        std::fs::rename(&staging, path)?;
        Ok(fresh)
    })();
    if staged.is_err() {
        // The full file keeps its name and its lines; drop the extra link and the staging file.
        let _ = std::fs::remove_file(backup);
        let _ = std::fs::remove_file(&staging);
    }
    staged
}

/// `2006.01.02.15.04.05.999999999` in Go's layout (UTC; trailing zeroes of the nanoseconds
/// dropped, as Go does).
fn backup_suffix(t: SystemTime) -> String {
    let c = Civil::of(t);
    let mut out = format!(
        "{:04}.{:02}.{:02}.{:02}.{:02}.{:02}",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    );
    let nanos = format!("{:09}", c.nanos);
    let nanos = nanos.trim_end_matches('0');
    if !nanos.is_empty() {
        out.push('.');
        out.push_str(nanos);
    }
    out
}

/// Where log lines go, as the options say.
#[derive(Debug, Clone, Default)]
pub struct Destination<'a> {
    pub log_file: Option<&'a Path>,
    /// Rotate the log file at this size (0: never).
    pub size_limit: u64,
    /// Local syslog (`syslog: true`), or a remote one (`udp://`, `tcp://`, `unix://`).
    pub syslog: bool,
    pub remote_syslog: Option<&'a str>,
    /// The syslog tag (`syslog_name`; the program name when unset).
    pub syslog_name: Option<&'a str>,
}

/// Installs the logger once; later calls are ignored. Fails only if the log file or the
/// syslog cannot be opened. A remote syslog wins over the local one, which wins over a file,
/// as in nats-server.
pub fn init(levels: Levels, logtime: bool, to: &Destination<'_>) -> std::io::Result<()> {
    let tag = to.syslog_name.unwrap_or("stanza");
    let sink = if let Some(url) = to.remote_syslog {
        Sink::Syslog(super::syslog::Syslog::remote(url, tag)?)
    } else if to.syslog {
        Sink::Syslog(super::syslog::Syslog::local(tag)?)
    } else {
        match to.log_file {
            Some(path) => {
                let file = open_log(path)?;
                let written = file.metadata().map(|m| m.len()).unwrap_or(0);
                Sink::File {
                    path: path.to_path_buf(),
                    file,
                    written,
                    limit: to.size_limit,
                }
            }
            None => Sink::Stderr,
        }
    };
    let logger: &'static NatsLogger = Box::leak(Box::new(NatsLogger {
        pid: std::process::id(),
        logtime,
        sink: Mutex::new(sink),
        nats: AtomicUsize::new(levels.nats() as usize),
        stan: AtomicUsize::new(levels.stan() as usize),
    }));
    if log::set_logger(logger).is_ok() {
        let _ = LOGGER.set(logger);
        log::set_max_level(levels.max());
    }
    Ok(())
}

/// Reopens the log file (after logrotate moved it away); nothing to do on standard error.
pub fn reopen() -> std::io::Result<()> {
    let Some(logger) = LOGGER.get() else {
        return Ok(());
    };
    let mut sink = match logger.sink.lock() {
        Ok(s) => s,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Sink::File {
        path,
        file,
        written,
        ..
    } = &mut *sink
    {
        *file = open_log(path)?;
        *written = file.metadata().map(|m| m.len()).unwrap_or(0);
    }
    Ok(())
}

/// Changes the levels at run time (configuration reload). `log::max_level` is the union, so
/// that a disabled line costs one atomic load at its call site.
pub fn set_levels(levels: Levels) {
    if let Some(logger) = LOGGER.get() {
        logger.nats.store(levels.nats() as usize, Ordering::Relaxed);
        logger.stan.store(levels.stan() as usize, Ordering::Relaxed);
    }
    log::set_max_level(levels.max());
}

/// `YYYY/MM/DD hh:mm:ss.micros` in UTC.
pub fn timestamp(t: SystemTime) -> String {
    let c = Civil::of(t);
    format!(
        "{:04}/{:02}/{:02} {:02}:{:02}:{:02}.{:06}",
        c.year,
        c.month,
        c.day,
        c.hour,
        c.minute,
        c.second,
        c.nanos / 1_000
    )
}

/// A UTC time broken into calendar fields (for the log, backup and syslog formats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u64,
    pub minute: u64,
    pub second: u64,
    pub nanos: u32,
}

impl Civil {
    pub fn of(t: SystemTime) -> Civil {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs();
        let (year, month, day) = civil_from_days((secs / 86_400) as i64);
        let rem = secs % 86_400;
        Civil {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: (rem / 60) % 60,
            second: rem % 60,
            nanos: d.subsec_nanos(),
        }
    }
}

/// Days since 1970-01-01 to a (year, month, day) date in the proleptic Gregorian calendar.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn backup_names_follow_gos_layout() {
        let t = UNIX_EPOCH + Duration::from_nanos(1_575_492_040_429_359_000);
        assert_eq!(backup_suffix(t), "2019.12.04.20.40.40.429359");
        assert_eq!(backup_suffix(UNIX_EPOCH), "1970.01.01.00.00.00");
    }

    #[test]
    fn formats_like_nats_server() {
        let t = UNIX_EPOCH + Duration::from_micros(1_575_492_040_429_359);
        assert_eq!(timestamp(t), "2019/12/04 20:40:40.429359");
        assert_eq!(timestamp(UNIX_EPOCH), "1970/01/01 00:00:00.000000");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(&timestamp(leap)[..10], "2000/02/29");
    }

    #[test]
    fn rotation_keeps_the_full_file_and_starts_a_new_one() {
        let dir = std::env::temp_dir().join(format!("stanza-rotate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("s.log");
        let mut file = open_log(&path).expect("open");
        file.write_all(b"old lines\n").expect("write");
        let mut written = 10;
        rotate(&path, &mut file, &mut written);
        file.write_all(b"new line\n").expect("write");
        let current = std::fs::read_to_string(&path).expect("current");
        assert!(
            current.contains("Rotated log, backup saved as"),
            "{current}"
        );
        assert!(current.ends_with("new line\n"), "{current}");
        assert_eq!(written as usize, current.len() - "new line\n".len());
        let names: Vec<String> = std::fs::read_dir(&dir)
            .expect("dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        let backups: Vec<&String> = names.iter().filter(|n| n.starts_with("s.log.")).collect();
        assert_eq!(backups.len(), 1, "{names:?}");
        let old = std::fs::read_to_string(dir.join(backups[0])).expect("backup");
        assert_eq!(old, "old lines\n");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
