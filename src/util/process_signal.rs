//! `stanza --signal <cmd>[=<pid>]`: sends a signal to a running server, as
//! `nats-streaming-server --signal` does. Without a pid, the one other running `stanza`
//! process is the target (ambiguity is an error).

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SignalError {
    #[error("unknown signal {0:?} (stop, quit, term, reopen, reload, ldm)")]
    UnknownCommand(String),
    #[error("invalid pid {0:?}")]
    BadPid(String),
    #[error("no stanza process found")]
    NoProcess,
    #[error("multiple stanza processes running ({0}); give one: --signal CMD=PID")]
    Ambiguous(String),
    #[error("cannot signal process {0}: {1}")]
    Kill(i32, String),
}

fn signal_number(command: &str) -> Option<libc::c_int> {
    Some(match command {
        "stop" => libc::SIGKILL,
        "quit" => libc::SIGINT,
        "term" => libc::SIGTERM,
        "reopen" => libc::SIGUSR1,
        "reload" => libc::SIGHUP,
        "ldm" => libc::SIGUSR2,
        _ => return None,
    })
}

/// Parses `cmd[=pid]`.
pub fn parse(spec: &str) -> Result<(libc::c_int, Option<i32>), SignalError> {
    let (command, pid) = match spec.split_once('=') {
        Some((c, p)) => (c, Some(p)),
        None => (spec, None),
    };
    let signal =
        signal_number(command).ok_or_else(|| SignalError::UnknownCommand(command.to_string()))?;
    let pid = match pid {
        Some(p) => Some(
            p.trim()
                .parse::<i32>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| SignalError::BadPid(p.to_string()))?,
        ),
        None => None,
    };
    Ok((signal, pid))
}

fn other_stanza_processes() -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim() == "stanza")
                .unwrap_or(false)
        })
        .collect()
}

/// Sends the signal; returns the pid signalled.
pub fn send(spec: &str) -> Result<i32, SignalError> {
    let (signal, pid) = parse(spec)?;
    let pid = match pid {
        Some(p) => p,
        None => {
            let found = other_stanza_processes();
            match found.as_slice() {
                [] => return Err(SignalError::NoProcess),
                [one] => *one,
                many => {
                    let list: Vec<String> = many.iter().map(i32::to_string).collect();
                    return Err(SignalError::Ambiguous(list.join(", ")));
                }
            }
        }
    };
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(SignalError::Kill(
            pid,
            std::io::Error::last_os_error().to_string(),
        ));
    }
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands_and_pids() {
        assert_eq!(parse("reload"), Ok((libc::SIGHUP, None)));
        assert_eq!(parse("quit=42"), Ok((libc::SIGINT, Some(42))));
        assert!(matches!(parse("boom"), Err(SignalError::UnknownCommand(_))));
        assert!(matches!(parse("stop=x"), Err(SignalError::BadPid(_))));
    }
}
