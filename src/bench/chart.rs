//! The latency-vs-throughput chart (PNG, plotters). Text needs a TrueType font; the bench
//! uses the system's DejaVu Sans (Debian's fonts-dejavu-core) and skips the chart, saying
//! so, when there is none.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::FontStyle;

/// One measured point: achieved requests/s and latency percentiles at that load.
#[derive(Clone, Copy, Debug)]
pub struct Point {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

pub struct Series {
    pub name: String,
    pub points: Vec<Point>,
}

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

fn register_font() -> Result<(), String> {
    let bytes = FONT_PATHS
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .ok_or("no DejaVuSans.ttf found (Debian: apt-get install fonts-dejavu-core)")?;
    // The font registry wants 'static bytes; one font per process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| "DejaVuSans.ttf is not a usable font".to_owned())
}

pub fn draw(path: &Path, title: &str, series: &[Series]) -> Result<(), String> {
    register_font()?;
    let max_rps = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.rps))
        .fold(1.0, f64::max);
    let max_ms = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.p99_ms))
        .fold(1.0, f64::max);
    let root = BitMapBackend::new(path, (1000, 620)).into_drawing_area();
    let err = |e: DrawingAreaErrorKind<_>| format!("drawing {}: {e}", path.display());
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_rps * 1.05, 0.0..max_ms * 1.1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("throughput (requests/s, open loop)")
        .y_desc("latency (ms)")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    let colors = [BLUE, RED, GREEN, MAGENTA];
    for (i, s) in series.iter().enumerate() {
        let color = colors[i % colors.len()];
        for (label, pick, dashed) in [
            ("p50", (|p: &Point| p.p50_ms) as fn(&Point) -> f64, false),
            ("p99", |p: &Point| p.p99_ms, true),
        ] {
            let pts: Vec<(f64, f64)> = s.points.iter().map(|p| (p.rps, pick(p))).collect();
            let style = if dashed {
                color.mix(0.55).stroke_width(2)
            } else {
                color.stroke_width(2)
            };
            chart
                .draw_series(LineSeries::new(pts.clone(), style))
                .map_err(err)?
                .label(format!("{} {label}", s.name))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))
                .map_err(err)?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
