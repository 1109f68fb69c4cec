//! Printing results as a table (default, for people), JSON or YAML (`-o json|yaml`, for scripts).

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// Prints `value` as JSON/YAML, or as the table `rows` builds.
pub fn print<T: Serialize>(format: Format, value: &T, table: impl FnOnce() -> Table) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Format::Yaml => print!("{}", serde_yaml::to_string(value)?),
        Format::Table => print!("{}", table().render()),
    }
    Ok(())
}

pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
    /// Tables printed after this one, each after a blank line.
    after: Vec<Table>,
}

impl Table {
    pub fn new(header: Vec<&'static str>) -> Self {
        Table { header, rows: Vec::new(), after: Vec::new() }
    }
    /// Prints `t` after this table (a detail's list below its fields).
    pub fn append(&mut self, t: Table) {
        self.after.push(t);
    }
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
    /// A two-column table of fields and values.
    pub fn fields(pairs: Vec<(&'static str, String)>) -> Self {
        let mut t = Table::new(vec![]);
        for (k, v) in pairs {
            t.row(vec![format!("{k}:"), v]);
        }
        t
    }
    pub fn render(&self) -> String {
        let cols = self.header.len().max(self.rows.iter().map(Vec::len).max().unwrap_or(0));
        let mut width = vec![0; cols];
        let all = std::iter::once(self.header.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .chain(self.rows.iter().cloned());
        let all: Vec<Vec<String>> = all.collect();
        for r in &all {
            for (i, c) in r.iter().enumerate() {
                width[i] = width[i].max(c.lines().next().unwrap_or("").chars().count());
            }
        }
        let mut out = String::new();
        for (n, r) in all.iter().enumerate() {
            if n == 0 && self.header.is_empty() {
                continue;
            }
            let line: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let c = c.lines().next().unwrap_or("");
                    if i + 1 == r.len() {
                        c.to_owned()
                    } else {
                        format!("{c:<w$}", w = width[i])
                    }
                })
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        if self.rows.is_empty() && !self.header.is_empty() {
            out.push_str("(none)\n");
        }
        for t in &self.after {
            out.push('\n');
            out.push_str(&t.render());
        }
        out
    }
}

/// `2s ago`, `3m ago` for ages shown in tables.
pub fn ago(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        _ => format!("{}h ago", s / 3600),
    }
}
