//! A run's result: a block of aligned lines for people, or one JSON object with `--json`.

use serde_json::{Map, Value, json};

use crate::machine::Machine;
use crate::stats::LatencySummary;

/// One line of a report: a JSON key and value, and how a person reads them.
#[derive(Debug, Clone)]
struct Row {
    key: String,
    value: Value,
    label: String,
    human: String,
}

/// What a run measured, under what conditions.
#[derive(Debug)]
pub struct Report {
    command: &'static str,
    started_at: String,
    machine: Machine,
    settings: Vec<Row>,
    results: Vec<Row>,
    notes: Vec<String>,
}

impl Report {
    /// An empty report of `command`, started now on `machine`.
    pub fn new(command: &'static str, machine: Machine) -> Self {
        Self {
            command,
            started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            machine,
            settings: Vec::new(),
            results: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Records a setting the run used.
    pub fn setting(&mut self, key: &str, label: &str, value: impl Into<Value>) {
        let value = value.into();
        let human = plain(&value);
        self.settings.push(row(key, label, value, human));
    }

    /// Records a measured quantity; `unit` is shown to people and left out of the JSON
    /// (the key names it).
    pub fn result(&mut self, key: &str, label: &str, value: impl Into<Value>, unit: &str) {
        let value = value.into();
        let human = match (&value, unit) {
            (Value::Null, _) => "n/a".to_owned(),
            (_, "") => plain(&value),
            _ => format!("{} {unit}", plain(&value)),
        };
        self.results.push(row(key, label, value, human));
    }

    /// Records a latency distribution as one line (p50, p90, p99, max) and one JSON object.
    pub fn latency(&mut self, key: &str, label: &str, summary: Option<LatencySummary>) {
        let (value, human) = match summary {
            Some(s) => (
                json!(s),
                format!(
                    "p50 {} ms, p90 {} ms, p99 {} ms, max {} ms (n = {})",
                    number(s.p50_ms),
                    number(s.p90_ms),
                    number(s.p99_ms),
                    number(s.max_ms),
                    s.count
                ),
            ),
            None => (Value::Null, "n/a (no values)".to_owned()),
        };
        self.results.push(row(key, label, value, human));
    }

    /// Adds a sentence that qualifies the figures.
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Prints the report to stdout.
    pub fn print(&self, as_json: bool) -> anyhow::Result<()> {
        if as_json {
            println!("{}", serde_json::to_string(&self.to_json())?);
        } else {
            print!("{}", self.to_text());
        }
        Ok(())
    }

    fn to_json(&self) -> Value {
        let object = |rows: &[Row]| -> Map<String, Value> {
            rows.iter()
                .map(|row| (row.key.clone(), row.value.clone()))
                .collect()
        };
        json!({
            "command": self.command,
            "started_at": self.started_at,
            "machine": self.machine,
            "settings": object(&self.settings),
            "results": object(&self.results),
            "notes": self.notes,
        })
    }

    fn to_text(&self) -> String {
        let width = self
            .settings
            .iter()
            .chain(&self.results)
            .map(|row| row.label.chars().count())
            .max()
            .unwrap_or(0)
            .max("postgres".len());
        let line = |label: &str, text: &str| format!("  {label:<width$}  {text}\n");
        let mut out = format!(
            "== agentplane-bench {} ({})\n",
            self.command, self.started_at
        );
        out += "machine\n";
        out += &line("host", &self.machine.summary());
        out += &line(
            "postgres",
            self.machine
                .postgres_version
                .as_deref()
                .unwrap_or("version not exposed by the API"),
        );
        out += "settings\n";
        for row in &self.settings {
            out += &line(&row.label, &row.human);
        }
        out += "results\n";
        for row in &self.results {
            out += &line(&row.label, &row.human);
        }
        if !self.notes.is_empty() {
            out += "notes\n";
            for note in &self.notes {
                out += &format!("  - {note}\n");
            }
        }
        out
    }
}

fn row(key: &str, label: &str, value: Value, human: String) -> Row {
    Row {
        key: key.to_owned(),
        value,
        label: label.to_owned(),
        human,
    }
}

/// A value as a person reads it: numbers rounded to a sensible precision, strings bare.
fn plain(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Number(n) if n.is_f64() => n.as_f64().map_or_else(|| n.to_string(), number),
        Value::Null => "n/a".to_owned(),
        other => other.to_string(),
    }
}

/// Two decimals for small numbers, fewer as they grow: 1.23, 123.4, 12345.
fn number(value: f64) -> String {
    match value.abs() {
        a if a >= 1000.0 => format!("{value:.0}"),
        a if a >= 100.0 => format!("{value:.1}"),
        _ => format!("{value:.2}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> Machine {
        Machine {
            cpu_model: "Example CPU".to_owned(),
            cpus: 2,
            memory_mib: Some(4096),
            kernel: "Linux 6.1".to_owned(),
            load_average: "0.10 0.20 0.30".to_owned(),
            postgres_version: None,
        }
    }

    #[test]
    fn numbers_keep_a_readable_precision() {
        assert_eq!(number(1.23456), "1.23");
        assert_eq!(number(123.456), "123.5");
        assert_eq!(number(12345.6), "12346");
        assert_eq!(number(-0.5), "-0.50");
    }

    #[test]
    fn json_has_one_key_per_row_and_text_has_units() {
        let mut report = Report::new("create", machine());
        report.setting("tasks", "tasks", 10);
        report.result("creates_per_second", "throughput", 1234.4, "tasks/s");
        report.result("missing", "missing value", Value::Null, "ms");
        report.latency("latency", "latency", LatencySummary::of(vec![1.0, 2.0]));
        let json = report.to_json();
        assert_eq!(json["command"], "create");
        assert_eq!(json["settings"]["tasks"], 10);
        assert_eq!(json["results"]["creates_per_second"], 1234.4);
        assert_eq!(json["results"]["latency"]["p50_ms"], 1.0);
        assert_eq!(json["machine"]["cpus"], 2);
        let text = report.to_text();
        assert!(text.contains("throughput     1234 tasks/s"), "{text}");
        assert!(text.contains("missing value  n/a"), "{text}");
        assert!(text.contains("p50 1.00 ms, p90 2.00 ms"), "{text}");
    }
}
