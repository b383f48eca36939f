//! CPU time spent during a run, from `/proc` (Linux), for DESIGN.md's cost per task (about
//! 0.1 ms of CPU for a no-op task). The API cannot say what the control plane, the workers
//! and PostgreSQL used, so this counts the whole machine's busy time and takes the bench's
//! own time off: on a machine running only the system under test, that is what it cost.
//! Anything else running at the same time (a build) is counted too.

use std::time::Duration;

/// Clock ticks per second of `/proc/stat` and `/proc/<pid>/stat` (`USER_HZ`): 100 on every
/// Linux architecture the project runs on.
const TICKS_PER_SECOND: u64 = 100;

/// CPU time counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuSample {
    /// Busy time of all CPUs together, in ticks.
    machine_busy: u64,
    /// This process's user and system time, in ticks.
    own: u64,
}

impl CpuSample {
    /// Reads the counters; `None` where `/proc` is missing or unreadable.
    pub fn read() -> Option<Self> {
        let machine = std::fs::read_to_string("/proc/stat").ok()?;
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        Some(Self {
            machine_busy: parse_machine_busy(&machine)?,
            own: parse_own_ticks(&own)?,
        })
    }
}

/// CPU time used between samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuSpent {
    /// Busy time of the whole machine.
    pub machine: Duration,
    /// Of which the bench's own.
    pub own: Duration,
}

impl CpuSpent {
    /// What was used from `before` to `after`.
    pub fn between(before: CpuSample, after: CpuSample) -> Self {
        Self {
            machine: ticks(after.machine_busy.saturating_sub(before.machine_busy)),
            own: ticks(after.own.saturating_sub(before.own)),
        }
    }

    /// What was used from `from` to `to`; `None` where either could not be read.
    pub fn over(from: Option<CpuSample>, to: Option<CpuSample>) -> Option<Self> {
        Some(Self::between(from?, to?))
    }

    /// Milliseconds of machine CPU, apart from the bench's own, per task; `None` for no tasks.
    pub fn others_ms_per_task(&self, tasks: usize) -> Option<f64> {
        let others = self.machine.saturating_sub(self.own);
        (tasks > 0).then(|| others.as_secs_f64() * 1000.0 / tasks as f64)
    }
}

fn ticks(count: u64) -> Duration {
    Duration::from_millis(count * 1000 / TICKS_PER_SECOND)
}

/// Busy ticks of the aggregate `cpu` line of `/proc/stat`: user, nice, system, irq,
/// softirq and steal (guest time is already inside user); idle and iowait are not busy.
fn parse_machine_busy(text: &str) -> Option<u64> {
    let line = text.lines().find(|line| line.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let field = |index: usize| fields.get(index).copied().unwrap_or(0);
    // 0 user, 1 nice, 2 system, 3 idle, 4 iowait, 5 irq, 6 softirq, 7 steal.
    (fields.len() >= 4).then(|| field(0) + field(1) + field(2) + field(5) + field(6) + field(7))
}

/// utime + stime of a `/proc/<pid>/stat` line (fields 14 and 15). The command name (field
/// 2) may hold spaces and parentheses, so fields are counted after its last `)`.
fn parse_own_ticks(text: &str) -> Option<u64> {
    let after_name = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name, field 3 (state) is index 0, so field n is index n - 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_busy_leaves_out_idle_and_iowait() {
        let text = "cpu  100 5 50 9000 40 3 2 1 0 0\ncpu0 50 2 25 4500 20 1 1 0 0 0\nintr 1\n";
        assert_eq!(parse_machine_busy(text), Some(161));
        assert_eq!(parse_machine_busy("intr 1\n"), None);
    }

    #[test]
    fn own_ticks_survive_odd_command_names() {
        let text = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 500 0 0 0 \
                    70 30 0 0 20 0 9 0 123 456789 100 18446744073709551615";
        assert_eq!(parse_own_ticks(text), Some(100));
        assert_eq!(parse_own_ticks("4242 (x) S 1"), None);
    }

    #[test]
    fn cost_per_task_excludes_the_bench() {
        let before = CpuSample {
            machine_busy: 1_000,
            own: 10,
        };
        let after = CpuSample {
            machine_busy: 1_250,
            own: 60,
        };
        let spent = CpuSpent::between(before, after);
        assert_eq!(spent.machine, Duration::from_millis(2_500));
        assert_eq!(spent.own, Duration::from_millis(500));
        // 2 s of others' CPU over 1000 tasks.
        assert_eq!(spent.others_ms_per_task(1_000), Some(2.0));
        assert_eq!(spent.others_ms_per_task(0), None);
    }
}
