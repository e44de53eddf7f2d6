//! Results: what a scenario reports (tables, targets, notes), the machine
//! description, the plain-text table printed to stdout and the
//! `bench/RESULTS.md` writer.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

#[derive(Clone, Debug)]
pub enum Verdict {
    Met,
    Missed(String),
    NotRun(String),
}

#[derive(Clone, Debug)]
pub struct Target {
    pub name: String,
    pub figure: String,
    pub verdict: Verdict,
}

impl Target {
    /// Met when `met`, else MISSED with `why`.
    pub fn check(
        name: impl Into<String>,
        figure: impl Into<String>,
        met: bool,
        why: impl Into<String>,
    ) -> Target {
        Target {
            name: name.into(),
            figure: figure.into(),
            verdict: if met {
                Verdict::Met
            } else {
                Verdict::Missed(why.into())
            },
        }
    }

    pub fn not_run(name: impl Into<String>, why: impl Into<String>) -> Target {
        Target {
            name: name.into(),
            figure: "-".into(),
            verdict: Verdict::NotRun(why.into()),
        }
    }

    fn verdict_text(&self) -> String {
        match &self.verdict {
            Verdict::Met => "met".into(),
            Verdict::Missed(why) => format!("MISSED: {why}"),
            Verdict::NotRun(why) => format!("not run: {why}"),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Table {
    pub caption: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(caption: impl Into<String>, header: &[&str]) -> Table {
        Table {
            caption: caption.into(),
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
}

/// What one scenario produced.
#[derive(Clone, Debug, Default)]
pub struct Section {
    pub key: &'static str,
    pub title: String,
    /// How the load was generated.
    pub client: String,
    pub tables: Vec<Table>,
    pub targets: Vec<Target>,
    pub notes: Vec<String>,
    /// Set when the scenario could not run (or stopped part-way).
    pub error: Option<String>,
    pub seconds: f64,
}

impl Section {
    pub fn new(key: &'static str, title: &str) -> Section {
        Section {
            key,
            title: title.to_string(),
            ..Section::default()
        }
    }
}

pub struct Machine {
    pub cores: String,
    pub memory: String,
    pub cpu: String,
    pub date: String,
    pub commit: String,
    pub tools: Vec<(String, String)>,
}

fn command_line(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(out) => {
            let mut s = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if s.is_empty() {
                s = String::from_utf8_lossy(&out.stderr).trim().to_string();
            }
            s.lines().next().unwrap_or("").to_string()
        }
        Err(e) => format!("unavailable ({e})"),
    }
}

impl Machine {
    pub fn describe(root: &Path) -> Machine {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kib| kib.parse::<f64>().ok())
            .map_or_else(
                || "unknown".into(),
                |kib| format!("{:.1} GiB", kib / 1024.0 / 1024.0),
            );
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            .unwrap_or_else(|| "unknown".into());
        let root_s = root.display().to_string();
        let mut commit = command_line("git", &["-C", &root_s, "rev-parse", "--short", "HEAD"]);
        let dirty = Command::new("git")
            .args([
                "-C",
                &root_s,
                "status",
                "--porcelain",
                "--untracked-files=no",
            ])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(false);
        if dirty {
            commit.push_str(" (with uncommitted changes in the work tree)");
        }
        Machine {
            cores: command_line("nproc", &[]),
            memory,
            cpu,
            date: command_line("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]),
            commit,
            tools: vec![
                ("wrk".into(), command_line(crate::load::WRK, &["-v"])),
                ("nginx".into(), command_line(crate::procs::NGINX, &["-v"])),
                (
                    "redis-server".into(),
                    command_line("redis-server", &["--version"]),
                ),
            ],
        }
    }
}

fn widths(t: &Table) -> Vec<usize> {
    let mut w: Vec<usize> = t.header.iter().map(|h| h.chars().count()).collect();
    for row in &t.rows {
        for (i, cell) in row.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(cell.chars().count());
            } else {
                w.push(cell.chars().count());
            }
        }
    }
    w
}

pub fn text_table(t: &Table) -> String {
    let w = widths(t);
    let mut s = String::new();
    if !t.caption.is_empty() {
        let _ = writeln!(s, "  {}", t.caption);
    }
    let line = |cells: &[String]| {
        let mut l = String::from("  ");
        for (i, c) in cells.iter().enumerate() {
            let _ = write!(l, "{:<width$}  ", c, width = w.get(i).copied().unwrap_or(0));
        }
        l.trim_end().to_string()
    };
    let _ = writeln!(s, "{}", line(&t.header));
    let _ = writeln!(
        s,
        "  {}",
        w.iter()
            .map(|n| "-".repeat(*n))
            .collect::<Vec<_>>()
            .join("  ")
    );
    for row in &t.rows {
        let _ = writeln!(s, "{}", line(row));
    }
    s
}

pub fn print_section(sec: &Section) {
    println!("\n== {} ({:.0} s)", sec.title, sec.seconds);
    if let Some(e) = &sec.error {
        println!("  could not run (or stopped part-way): {e}");
    }
    for t in &sec.tables {
        print!("{}", text_table(t));
    }
    for t in &sec.targets {
        println!(
            "  target: {} = {} -> {}",
            t.name,
            t.figure,
            t.verdict_text()
        );
    }
    for n in &sec.notes {
        println!("  note: {n}");
    }
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|")
}

fn md_table(t: &Table) -> String {
    let mut s = String::new();
    if !t.caption.is_empty() {
        let _ = writeln!(s, "{}\n", t.caption);
    }
    let _ = writeln!(
        s,
        "| {} |",
        t.header
            .iter()
            .map(|h| md_cell(h))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(s, "|{}", "---|".repeat(t.header.len()));
    for row in &t.rows {
        let _ = writeln!(
            s,
            "| {} |",
            row.iter()
                .map(|c| md_cell(c))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    s
}

pub struct RunInfo<'a> {
    pub mode: &'a str,
    pub rounds: usize,
    pub command: String,
    pub sections: &'a [Section],
    pub total_seconds: f64,
}

/// Where the part of RESULTS.md that the bench program does not write
/// begins; everything from it on survives a rewrite.
const KEPT_MARKER: &str =
    "<!-- Below: measured by other programs; the bench program keeps this part as it is. -->";

pub fn write_results(path: &Path, m: &Machine, run: &RunInfo<'_>) -> Result<()> {
    let mut s = String::new();
    let _ = writeln!(s, "# profile-edge benchmark results\n");
    let _ = writeln!(
        s,
        "Written by `{}` (the bench program in this folder); every figure below comes from that run on this machine. Rerun it to refresh this file.\n",
        run.command
    );
    let _ = writeln!(s, "| | |\n|---|---|");
    let _ = writeln!(
        s,
        "| run | {} ({} round(s) per alternating comparison, median reported), {:.0} s |",
        run.mode, run.rounds, run.total_seconds
    );
    let _ = writeln!(s, "| date | {} |", m.date);
    let _ = writeln!(s, "| git commit | {} |", m.commit);
    let _ = writeln!(s, "| machine | {} cores ({}), {} RAM, shared: the load generator, the simulated origin and the proxy all run on these cores |", m.cores, m.cpu, m.memory);
    for (tool, version) in &m.tools {
        let _ = writeln!(s, "| {tool} | {} |", md_cell(version));
    }
    let _ = writeln!(
        s,
        "| load generators | `wrk` (Debian) for warm-hit throughput; the bench's own hyper client (HTTP/1.1 keep-alive, closed loop, one connection per in-flight request; h2c for the cold bursts) elsewhere, as each section says |"
    );
    let _ = writeln!(s, "| origin | `profile_edge::testkit::SimOrigin` in the bench process (simulated Officer + Posts API, 20 ms per call unless a section says otherwise) |");
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "Absolute numbers on a shared 2-core machine are noisy; the figures that matter are ratios against a baseline measured in the same run, in alternating rounds, with the median reported.\n"
    );

    let _ = writeln!(s, "## Targets\n");
    let _ = writeln!(
        s,
        "| scenario | target | measured | verdict |\n|---|---|---|---|"
    );
    for sec in run.sections {
        if sec.targets.is_empty() {
            if let Some(e) = &sec.error {
                let _ = writeln!(
                    s,
                    "| {} | - | - | not run: {} |",
                    sec.key,
                    md_cell(first_line(e))
                );
            }
        }
        for t in &sec.targets {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                sec.key,
                md_cell(&t.name),
                md_cell(&t.figure),
                md_cell(&t.verdict_text())
            );
        }
    }
    let _ = writeln!(s);

    for sec in run.sections {
        let _ = writeln!(
            s,
            "## {} (`--only {}`, {:.0} s)\n",
            sec.title, sec.key, sec.seconds
        );
        if !sec.client.is_empty() {
            let _ = writeln!(s, "Load: {}\n", sec.client);
        }
        if let Some(e) = &sec.error {
            let _ = writeln!(
                s,
                "**Could not run (or stopped part-way):**\n\n```\n{}\n```\n",
                e.trim_end()
            );
        }
        for t in &sec.tables {
            let _ = writeln!(s, "{}", md_table(t));
        }
        for n in &sec.notes {
            let _ = writeln!(s, "- {n}");
        }
        if !sec.notes.is_empty() {
            let _ = writeln!(s);
        }
    }
    // Sections other programs measure (the `policy_cost` example) follow
    // this marker; a bench run keeps them as they are.
    if let Ok(old) = std::fs::read_to_string(path) {
        if let Some(at) = old.find(KEPT_MARKER) {
            let _ = writeln!(s, "{}", old[at..].trim_end());
        }
    }
    std::fs::write(path, s).with_context(|| format!("write {}", path.display()))
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}
