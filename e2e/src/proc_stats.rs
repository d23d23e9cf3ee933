//! What `/proc` says about a process: its CPU time and memory, for the
//! benchmarks' cost figures and the leak checks, and its parent.

use std::fs;

/// Linux's USER_HZ: the unit of utime and stime in `/proc/PID/stat`.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// User + system CPU seconds `pid` has used so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command's closing parenthesis: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / CLOCK_TICKS_PER_SECOND)
}

/// CPU seconds (user + system) used so far by every process whose command
/// is `command` (such as `postgres`, a server and its backends), including
/// what their children that have exited and been reaped used: a server's
/// cost over a benchmark, however many processes it forks.
pub fn command_cpu_seconds(command: &str) -> f64 {
    let Ok(entries) = fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut ticks = 0_u64;
    for entry in entries.flatten() {
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if head.split_once('(').map(|(_, comm)| comm) != Some(command) {
            continue;
        }
        // utime, stime, cutime, cstime: fields 14 to 17.
        let fields: Vec<&str> = rest.split_whitespace().collect();
        ticks += fields
            .get(11..15)
            .into_iter()
            .flatten()
            .filter_map(|field| field.parse::<u64>().ok())
            .sum::<u64>();
    }
    ticks as f64 / CLOCK_TICKS_PER_SECOND
}

/// The number of a `/proc/PID/status` line: `VmRSS` and `VmHWM` (peak) in
/// KiB, `PPid`, …
pub fn status_number(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The whole machine's CPU time so far, from `/proc/stat`: busy and total
/// ticks over every core. Two readings tell how many cores were busy between
/// them ([`MachineCpu::busy_cores_since`]), i.e. whether a benchmark was
/// bound by the CPU rather than by what it measures.
#[derive(Clone, Copy, Debug)]
pub struct MachineCpu {
    busy: u64,
    total: u64,
    cores: usize,
}

impl MachineCpu {
    pub fn now() -> Option<MachineCpu> {
        let stat = fs::read_to_string("/proc/stat").ok()?;
        let ticks: Vec<u64> = stat
            .lines()
            .next()?
            .strip_prefix("cpu ")?
            .split_whitespace()
            .filter_map(|field| field.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal …: idle and iowait are not busy.
        let idle = ticks.get(3)? + ticks.get(4)?;
        let total: u64 = ticks.iter().take(8).sum();
        let cores = stat
            .lines()
            .filter(|line| line.starts_with("cpu") && !line.starts_with("cpu "))
            .count();
        Some(MachineCpu {
            busy: total - idle,
            total,
            cores,
        })
    }

    /// How many cores were busy, on average, since `earlier`.
    pub fn busy_cores_since(&self, earlier: &MachineCpu) -> f64 {
        let total = self.total.saturating_sub(earlier.total).max(1);
        let busy = self.busy.saturating_sub(earlier.busy);
        busy as f64 / total as f64 * self.cores as f64
    }

    pub fn cores(&self) -> usize {
        self.cores
    }
}

/// `VmRSS` (resident memory now) of `pid` in MiB.
pub fn rss_mib(pid: u32) -> Option<f64> {
    status_number(pid, "VmRSS").map(|kib| kib as f64 / 1024.0)
}

/// `VmHWM` (peak resident memory) of `pid` in MiB.
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    status_number(pid, "VmHWM").map(|kib| kib as f64 / 1024.0)
}

/// Starts `pid`'s `VmHWM` over from its resident memory now (Linux's
/// `clear_refs` 5), so a later [`peak_rss_mib`] is the peak of what came
/// after: one phase of a benchmark run in one process. `false` when the
/// kernel refused.
pub fn reset_peak_rss(pid: u32) -> bool {
    fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_memory_and_a_parent() {
        let me = std::process::id();
        assert!(cpu_seconds(me).is_some_and(|seconds| seconds >= 0.0));
        assert!(status_number(me, "VmRSS").is_some_and(|kib| kib > 0));
        assert!(peak_rss_mib(me).is_some_and(|mib| mib > 0.0));
        assert!(status_number(me, "PPid").is_some());
        assert_eq!(status_number(me, "NoSuchField"), None);
    }

    #[test]
    fn a_command_s_cpu_time_counts_its_processes() {
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(30) {}
        let me = fs::read_to_string("/proc/self/comm").expect("comm");
        assert!(command_cpu_seconds(me.trim()) > 0.0);
        assert_eq!(command_cpu_seconds("no-such-command-here"), 0.0);
    }

    #[test]
    fn the_machine_has_cores_and_busy_time() {
        let before = MachineCpu::now().expect("/proc/stat");
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(50) {}
        let after = MachineCpu::now().expect("/proc/stat");
        assert!(after.cores() >= 1);
        let busy = after.busy_cores_since(&before);
        assert!((0.0..=after.cores() as f64).contains(&busy), "{busy}");
    }
}
