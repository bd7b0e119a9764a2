//! Results: rows with chatd's figure, its reference and their ratio; the
//! Markdown table, the BENCHMARKS.md section between markers, and the plot.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use crate::hist::{fmt_us, Summary};

/// The unit of a figure, for printing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Microseconds, printed as µs/ms/s.
    Micros,
    /// Events per second.
    PerSec,
    /// Bytes, printed as B/KiB/MiB.
    Bytes,
    /// A plain count.
    Count,
}

/// What a row is judged against.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// chatd / reference must be at most this.
    RatioAtMost(f64),
    /// chatd / reference must be at least this.
    RatioAtLeast(f64),
    /// chatd's figure must be at most this (in the row's unit).
    AtMost(f64),
    /// A rule stated in words, judged by the scenario.
    Judged {
        /// The rule.
        rule: String,
        /// Whether it holds.
        met: bool,
    },
}

/// One line of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// `S1`..`S5`.
    pub scenario: String,
    /// What is measured, e.g. `1 pair: p50 round trip`.
    pub metric: String,
    /// The unit of both figures.
    pub unit: Unit,
    /// chatd's figure.
    pub chatd: Option<f64>,
    /// What the reference is (`baseline`, `raw argon2`, ...).
    pub reference: String,
    /// The reference's figure.
    pub base: Option<f64>,
    /// The target, if the issue sets one.
    pub target: Option<Target>,
}

impl Row {
    /// A row against the baseline relay.
    pub fn new(scenario: &str, metric: impl Into<String>, unit: Unit) -> Row {
        Row {
            scenario: scenario.into(),
            metric: metric.into(),
            unit,
            chatd: None,
            reference: "baseline".into(),
            base: None,
            target: None,
        }
    }

    /// Sets the figures.
    pub fn values(mut self, chatd: Option<f64>, base: Option<f64>) -> Row {
        self.chatd = chatd;
        self.base = base;
        self
    }

    /// Names the reference.
    pub fn reference(mut self, r: &str) -> Row {
        self.reference = r.into();
        self
    }

    /// Sets the target.
    pub fn target(mut self, t: Target) -> Row {
        self.target = Some(t);
        self
    }

    /// chatd / reference.
    pub fn ratio(&self) -> Option<f64> {
        match (self.chatd, self.base) {
            (Some(c), Some(b)) if b > 0.0 => Some(c / b),
            _ => None,
        }
    }

    /// Whether the target is met; `None` without a target or figures.
    pub fn met(&self) -> Option<bool> {
        match self.target.as_ref()? {
            Target::RatioAtMost(x) => self.ratio().map(|r| r <= *x),
            Target::RatioAtLeast(x) => self.ratio().map(|r| r >= *x),
            Target::AtMost(x) => self.chatd.map(|c| c <= *x),
            Target::Judged { met, .. } => Some(*met),
        }
    }

    fn target_text(&self) -> String {
        match &self.target {
            None => String::new(),
            Some(Target::RatioAtMost(x)) => format!("≤ {x}×"),
            Some(Target::RatioAtLeast(x)) => format!("≥ {x}×"),
            Some(Target::AtMost(x)) => format!("≤ {}", fmt_value(self.unit, Some(*x))),
            Some(Target::Judged { rule, .. }) => rule.clone(),
        }
    }
}

/// A figure in its unit.
pub fn fmt_value(unit: Unit, v: Option<f64>) -> String {
    let Some(v) = v else {
        return "—".into();
    };
    match unit {
        Unit::Micros => fmt_us(v),
        Unit::PerSec => {
            if v >= 100.0 {
                format!("{}/s", group(v.round() as u64))
            } else {
                format!("{v:.1}/s")
            }
        }
        Unit::Bytes => {
            if v >= 1024.0 * 1024.0 {
                format!("{:.1} MiB", v / 1024.0 / 1024.0)
            } else if v >= 1024.0 {
                format!("{:.2} KiB", v / 1024.0)
            } else {
                format!("{v:.0} B")
            }
        }
        Unit::Count => group(v.round() as u64),
    }
}

fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The Markdown table of `rows`.
pub fn table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| | measured | chatd | reference | ref. value | ratio | target | met |\n\
         |---|---|---:|---|---:|---:|---|---|\n",
    );
    for r in rows {
        let ratio = r.ratio().map_or("—".into(), |x| {
            if x >= 10.0 {
                format!("{x:.0}×")
            } else {
                format!("{x:.2}×")
            }
        });
        let met = match r.met() {
            Some(true) => "**yes**",
            Some(false) => "**no**",
            None => "",
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.metric,
            fmt_value(r.unit, r.chatd),
            r.reference,
            fmt_value(r.unit, r.base),
            ratio,
            r.target_text(),
            met
        );
    }
    s
}

/// Prints rows to the terminal.
pub fn print(rows: &[Row]) {
    println!("\n{}", table(rows));
}

/// The begin and end markers of the generated section of BENCHMARKS.md.
pub const BEGIN: &str =
    "<!-- chat-bench:begin (generated by `chat-bench all`; edits here are overwritten) -->";
/// See [`BEGIN`].
pub const END: &str = "<!-- chat-bench:end -->";

/// Replaces the text between the markers of `doc` with `section`; appends
/// the markers and the section when they are missing.
pub fn replace_section(doc: &str, section: &str) -> String {
    let begin_key = "<!-- chat-bench:begin";
    if let (Some(b), Some(e)) = (doc.find(begin_key), doc.find(END)) {
        if b < e {
            return format!(
                "{}{BEGIN}\n{}\n{}",
                &doc[..b],
                section.trim_end(),
                &doc[e..]
            );
        }
    }
    let mut out = doc.trim_end().to_string();
    if !out.is_empty() {
        out.push_str("\n\n");
    }
    format!("{out}{BEGIN}\n{}\n{END}\n", section.trim_end())
}

/// Rewrites the generated section of the report file.
pub fn write_section(path: &Path, section: &str) -> Result<()> {
    let doc = std::fs::read_to_string(path).unwrap_or_default();
    std::fs::write(path, replace_section(&doc, section))
        .with_context(|| format!("writing {}", path.display()))
}

/// S2 at one receiver count: (receivers, chatd deliveries/s, baseline
/// deliveries/s).
pub type S2Point = (usize, Option<f64>, Option<f64>);

/// What the plot shows.
#[derive(Clone, Debug, Default)]
pub struct PlotData {
    /// S2: (receivers, chatd deliveries/s, baseline deliveries/s).
    pub s2: Vec<S2Point>,
    /// S1 with many pairs: round-trip percentiles of chatd and the baseline.
    pub s1: Option<(usize, Summary, Summary)>,
    /// S2: (receivers, ngircd deliveries/s), when ngircd ran.
    pub s2_ngircd: Vec<(usize, f64)>,
    /// S1 with many pairs: ngircd's round-trip percentiles, when it ran.
    pub s1_ngircd: Option<Summary>,
}

/// The legend of ngircd's S2 line: chatd/ngircd at the largest receiver
/// count both reached, so the plot carries the ratio the report's rows do.
fn s2_ngircd_label(data: &PlotData) -> String {
    let last = data.s2_ngircd.iter().rev().find_map(|&(n, irc)| {
        let chatd = data.s2.iter().find(|p| p.0 == n)?.1?;
        (irc > 0.0).then_some((n, chatd / irc))
    });
    match last {
        Some((n, r)) => format!("ngircd (chatd/ngircd {r:.2}× at {n})"),
        None => "ngircd".to_string(),
    }
}

/// Draws the plot as SVG: S2 throughput against receivers, and S1
/// latency percentiles.
pub fn plot(path: &Path, data: &PlotData) -> Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(500);
    let chatd_color = RGBColor(200, 60, 40);
    let base_color = RGBColor(40, 90, 200);

    // Left: deliveries/s against receivers.
    let points = |pick: fn(&S2Point) -> Option<f64>| -> Vec<(f64, f64)> {
        data.s2
            .iter()
            .filter_map(|p| pick(p).map(|v| (p.0 as f64, v)))
            .collect()
    };
    let chatd_pts = points(|p| p.1);
    let base_pts = points(|p| p.2);
    let irc_pts: Vec<(f64, f64)> = data.s2_ngircd.iter().map(|&(n, v)| (n as f64, v)).collect();
    let irc_color = RGBColor(40, 150, 60);
    let ymax = chatd_pts
        .iter()
        .chain(&base_pts)
        .chain(&irc_pts)
        .map(|p| p.1)
        .fold(1.0, f64::max)
        * 1.15;
    let xmax = data.s2.iter().map(|p| p.0).max().unwrap_or(1000) as f64 * 1.1;
    let mut chart = ChartBuilder::on(&left)
        .caption(
            "S2 broadcast: deliveries/s at saturation",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax)?;
    chart
        .configure_mesh()
        .x_desc("receivers")
        .y_desc("deliveries/s")
        .y_label_formatter(&|v| format!("{:.0}k", v / 1000.0))
        .draw()?;
    let irc_label = s2_ngircd_label(data);
    for (pts, color, label) in [
        (&chatd_pts, chatd_color, "chatd".to_string()),
        (&base_pts, base_color, "baseline relay".to_string()),
        (&irc_pts, irc_color, irc_label),
    ] {
        if pts.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;

    // Right: S1 round-trip percentiles (log scale).
    let labels = ["p50", "p90", "p99", "p99.9"];
    let (pairs, c, b) = data
        .s1
        .unwrap_or((0, Summary::default(), Summary::default()));
    let vals = |s: &Summary| [s.p50, s.p90, s.p99, s.p999].map(|v| (v.max(1)) as f64);
    let (cv, bv) = (vals(&c), vals(&b));
    let iv = data.s1_ngircd.as_ref().map(vals);
    let top = cv
        .iter()
        .chain(&bv)
        .chain(iv.iter().flatten())
        .fold(10.0f64, |a, &v| a.max(v))
        * 2.0;
    let mut chart = ChartBuilder::on(&right)
        .caption(
            format!("S1 round trip, {pairs} pairs (log scale)"),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..3.5f64, (1f64..top).log_scale())?;
    chart
        .configure_mesh()
        .x_labels(4)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 0.01 && (0.0..4.0).contains(&i) {
                labels[i as usize].to_string()
            } else {
                String::new()
            }
        })
        .y_desc("µs")
        .y_label_formatter(&|v| fmt_us(*v))
        .draw()?;
    let mut series = vec![
        (cv, chatd_color, "chatd".to_string()),
        (bv, base_color, "baseline relay".to_string()),
    ];
    if let (Some(iv), Some(ci)) = (iv, data.s1_ngircd) {
        let ratio = c.p50 as f64 / ci.p50.max(1) as f64;
        series.push((
            iv,
            irc_color,
            format!("ngircd (chatd/ngircd p50 {ratio:.2}×)"),
        ));
    }
    for (vals, color, label) in series {
        let pts: Vec<(f64, f64)> = vals
            .iter()
            .enumerate()
            .map(|(i, &v)| (i as f64, v))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_and_targets() {
        let r = Row::new("S1", "p50", Unit::Micros)
            .values(Some(130.0), Some(100.0))
            .target(Target::RatioAtMost(1.3));
        assert_eq!(r.ratio(), Some(1.3));
        assert_eq!(r.met(), Some(true));
        let r = r.values(Some(131.0), Some(100.0));
        assert_eq!(r.met(), Some(false));
        let r = Row::new("S2", "d/s", Unit::PerSec)
            .values(Some(40.0), Some(100.0))
            .target(Target::RatioAtLeast(0.5));
        assert_eq!(r.met(), Some(false));
        let r = Row::new("S3", "mem", Unit::Bytes)
            .values(Some(4000.0), None)
            .target(Target::AtMost(4096.0));
        assert_eq!(r.met(), Some(true));
        assert_eq!(r.ratio(), None);
        assert_eq!(Row::new("S", "x", Unit::Count).met(), None);
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_value(Unit::PerSec, Some(1_234_567.4)), "1,234,567/s");
        assert_eq!(fmt_value(Unit::PerSec, Some(12.34)), "12.3/s");
        assert_eq!(fmt_value(Unit::Bytes, Some(3072.0)), "3.00 KiB");
        assert_eq!(
            fmt_value(Unit::Bytes, Some(3.0 * 1024.0 * 1024.0)),
            "3.0 MiB"
        );
        assert_eq!(fmt_value(Unit::Count, Some(100_000.0)), "100,000");
        assert_eq!(fmt_value(Unit::Micros, None), "—");
        let t = table(&[Row::new("S1", "p50", Unit::Micros)
            .values(Some(200.0), Some(100.0))
            .target(Target::RatioAtMost(1.3))]);
        assert!(
            t.contains("| S1 | p50 | 200 µs | baseline | 100 µs | 2.00× | ≤ 1.3× | **no** |"),
            "{t}"
        );
    }

    #[test]
    fn section_is_replaced_between_markers_only() {
        let doc = format!("# Title\n\nprose\n\n{BEGIN}\nold table\n{END}\n\nmore prose\n");
        let out = replace_section(&doc, "new table\n");
        assert_eq!(
            out,
            format!("# Title\n\nprose\n\n{BEGIN}\nnew table\n{END}\n\nmore prose\n")
        );
        // Idempotent.
        assert_eq!(replace_section(&out, "new table"), out);
        // Missing markers: appended.
        let out = replace_section("# T\n", "x");
        assert_eq!(out, format!("# T\n\n{BEGIN}\nx\n{END}\n"));
        assert_eq!(replace_section("", "x"), format!("{BEGIN}\nx\n{END}\n"));
    }

    #[test]
    fn plot_writes_an_svg() {
        let dir = std::env::temp_dir().join(format!("chat-bench-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.svg");
        let s = Summary {
            count: 10,
            p50: 100,
            p90: 200,
            p99: 400,
            p999: 900,
            max: 1000,
            mean: 150.0,
        };
        let data = PlotData {
            s2: vec![
                (100, Some(50_000.0), Some(90_000.0)),
                (1000, None, Some(80_000.0)),
            ],
            s1: Some((50, s, s)),
            s2_ngircd: vec![(100, 100_000.0)],
            s1_ngircd: Some(s),
        };
        assert_eq!(s2_ngircd_label(&data), "ngircd (chatd/ngircd 0.50× at 100)");
        plot(&path, &data).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("deliveries/s") && svg.contains("ngircd"),
            "{}",
            &svg[..200.min(svg.len())]
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
