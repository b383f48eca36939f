//! What machine a run happened on, from `/proc` (Linux). Figures mean little without it:
//! the results are only comparable between runs on the same hardware and load.

use serde::Serialize;

/// The machine the bench runs on. With `deploy/local/up.sh` the control plane, the workers
/// and PostgreSQL run on it too.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPU model name, as `/proc/cpuinfo` says it.
    pub cpu_model: String,
    /// Logical CPUs.
    pub cpus: usize,
    /// Total memory in MiB.
    pub memory_mib: Option<u64>,
    /// Kernel name and release.
    pub kernel: String,
    /// The 1, 5 and 15 minute load averages when the run started: other work on the machine
    /// at the time.
    pub load_average: String,
    /// The PostgreSQL server version; `None` because the API does not expose it.
    pub postgres_version: Option<String>,
}

impl Machine {
    /// Reads the details; a file that cannot be read leaves its field "unknown".
    pub fn detect() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let (cpu_model, listed_cpus) = parse_cpuinfo(&read("/proc/cpuinfo"));
        let cpus = if listed_cpus > 0 {
            listed_cpus
        } else {
            std::thread::available_parallelism().map_or(0, usize::from)
        };
        let kernel = format!(
            "{} {}",
            read("/proc/sys/kernel/ostype").trim(),
            read("/proc/sys/kernel/osrelease").trim()
        );
        let load: Vec<String> = read("/proc/loadavg")
            .split_whitespace()
            .take(3)
            .map(str::to_owned)
            .collect();
        Self {
            cpu_model: cpu_model.unwrap_or_else(|| "unknown".to_owned()),
            cpus,
            memory_mib: parse_mem_total_kib(&read("/proc/meminfo")).map(|kib| kib / 1024),
            kernel: non_empty(kernel.trim()),
            load_average: non_empty(&load.join(" ")),
            postgres_version: None,
        }
    }

    /// One line for the human-readable report.
    pub fn summary(&self) -> String {
        let memory = self.memory_mib.map_or("unknown memory".to_owned(), |mib| {
            format!("{:.1} GiB memory", mib as f64 / 1024.0)
        });
        format!(
            "{} × {} CPUs, {memory}, {}, load average {}",
            self.cpu_model, self.cpus, self.kernel, self.load_average
        )
    }
}

fn non_empty(text: &str) -> String {
    if text.is_empty() {
        "unknown".to_owned()
    } else {
        text.to_owned()
    }
}

/// The first `model name` and the number of `processor` entries of `/proc/cpuinfo`.
fn parse_cpuinfo(text: &str) -> (Option<String>, usize) {
    let mut model = None;
    let mut processors = 0;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        match key.trim() {
            "processor" => processors += 1,
            "model name" if model.is_none() => model = Some(value.trim().to_owned()),
            _ => {}
        }
    }
    (model, processors)
}

/// `MemTotal` of `/proc/meminfo`, in KiB.
fn parse_mem_total_kib(text: &str) -> Option<u64> {
    let line = text.lines().find(|line| line.starts_with("MemTotal:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuinfo_gives_the_first_model_and_counts_processors() {
        let text = "processor\t: 0\nmodel name\t: Example CPU @ 2.0GHz\nflags\t: fpu\n\n\
                    processor\t: 1\nmodel name\t: Example CPU @ 2.0GHz\n";
        assert_eq!(
            parse_cpuinfo(text),
            (Some("Example CPU @ 2.0GHz".to_owned()), 2)
        );
        assert_eq!(parse_cpuinfo(""), (None, 0));
    }

    #[test]
    fn meminfo_gives_the_total() {
        let text = "MemTotal:        8039512 kB\nMemFree:         1234 kB\n";
        assert_eq!(parse_mem_total_kib(text), Some(8_039_512));
        assert_eq!(parse_mem_total_kib("MemFree: 1 kB\n"), None);
    }
}
