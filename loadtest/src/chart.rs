//! `chart.png`: throughput per second (top) and p50/p99 latency per second (bottom)
//! over the run, drawn with plotters' bitmap backend. Text uses a TTF loaded at run
//! time through ab_glyph (no fontconfig); without the font the chart is drawn without
//! any text, and the caller says so.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::anyhow;
use plotters::coord::types::{RangedCoordf64, RangedCoordu64};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::report::SecondSummary;

const FAMILY: &str = "sans-serif";

/// Registers the TTF at `path` once per process; false when it cannot be read.
fn font_loaded(path: &Path) -> bool {
    static LOADED: OnceLock<bool> = OnceLock::new();
    *LOADED.get_or_init(|| match std::fs::read(path) {
        Ok(bytes) => {
            // plotters keeps fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            register_font(FAMILY, FontStyle::Normal, bytes).is_ok()
        }
        Err(_) => false,
    })
}

/// Draws the chart; returns whether it has text (false: font missing).
pub fn draw(
    path: &Path,
    title: &str,
    timeline: &[SecondSummary],
    font: &Path,
) -> anyhow::Result<bool> {
    let text = font_loaded(font);
    draw_with(path, title, timeline, text)
        .map_err(|e| anyhow!("drawing {}: {e}", path.display()))?;
    Ok(text)
}

fn draw_with(
    path: &Path,
    title: &str,
    timeline: &[SecondSummary],
    text: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::new(path, (1200, 800)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = if text {
        root.titled(title, (FAMILY, 24))?
    } else {
        root
    };
    let (top, bottom) = root.split_vertically(390);
    let seconds = timeline.last().map_or(1, |s| s.second.max(1));
    let max_rps = timeline
        .iter()
        .map(|s| s.completed)
        .max()
        .unwrap_or(0)
        .max(1);
    let max_ms = timeline
        .iter()
        .filter_map(|s| s.p99_ms)
        .fold(0.0_f64, f64::max)
        .max(1.0);

    let area = |n: u32| if text { n } else { 10 };

    let mut throughput = ChartBuilder::on(&top)
        .margin(15)
        .x_label_area_size(area(35))
        .y_label_area_size(area(70))
        .build_cartesian_2d(0u64..seconds, 0u64..(max_rps + max_rps / 10 + 1))?;
    if text {
        throughput
            .configure_mesh()
            .x_labels(12)
            .y_labels(8)
            .x_desc("second of the run")
            .y_desc("answers per second")
            .label_style((FAMILY, 14))
            .draw()?;
    } else {
        let top = max_rps + max_rps / 10 + 1;
        throughput.draw_series(grid(seconds, top as f64, |y| y as u64))?;
    }
    throughput.draw_series(dots(timeline, |s| s.completed, BLUE))?;
    let completed = throughput.draw_series(LineSeries::new(
        timeline.iter().map(|s| (s.second, s.completed)),
        BLUE.stroke_width(2),
    ))?;
    if text {
        completed
            .label("answers/s")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    }
    throughput.draw_series(dots(timeline, |s| s.errors, RED))?;
    let errors = throughput.draw_series(LineSeries::new(
        timeline.iter().map(|s| (s.second, s.errors)),
        RED.stroke_width(2),
    ))?;
    if text {
        errors
            .label("errors/s")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
        throughput
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font((FAMILY, 14))
            .draw()?;
    }

    let mut latency = ChartBuilder::on(&bottom)
        .margin(15)
        .x_label_area_size(area(35))
        .y_label_area_size(area(70))
        .build_cartesian_2d(0u64..seconds, 0f64..max_ms * 1.1)?;
    if text {
        latency
            .configure_mesh()
            .x_labels(12)
            .y_labels(8)
            .x_desc("second of the run")
            .y_desc("latency ms")
            .label_style((FAMILY, 14))
            .draw()?;
    } else {
        latency.draw_series(grid(seconds, max_ms * 1.1, |y| y))?;
    }
    // Seconds without answers have no latency: the lines break there.
    let legend = |name| text.then_some(name);
    draw_latency(&mut latency, timeline, |s| s.p50_ms, GREEN, legend("p50"))?;
    draw_latency(&mut latency, timeline, |s| s.p99_ms, MAGENTA, legend("p99"))?;
    if text {
        latency
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font((FAMILY, 14))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// A dot per second, so a run of one or two seconds still shows.
/// A latency line in runs of consecutive seconds that had answers, with a dot per
/// second, and its legend entry when the chart has text.
fn draw_latency<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordu64, RangedCoordf64>>,
    timeline: &[SecondSummary],
    y: impl Fn(&SecondSummary) -> Option<f64>,
    color: RGBColor,
    legend: Option<&str>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let points: Vec<(u64, f64)> = timeline
        .iter()
        .filter_map(|s| Some((s.second, y(s)?)))
        .collect();
    chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    let mut runs: Vec<Vec<(u64, f64)>> = Vec::new();
    for point in points {
        match runs.last_mut() {
            Some(run) if run.last().is_some_and(|last| last.0 + 1 == point.0) => run.push(point),
            _ => runs.push(vec![point]),
        }
    }
    for run in runs {
        chart.draw_series(LineSeries::new(run, color.stroke_width(2)))?;
    }
    if let Some(name) = legend {
        // An empty series that only carries the legend entry.
        chart
            .draw_series(LineSeries::new(Vec::new(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    Ok(())
}

fn dots<Y: 'static>(
    timeline: &[SecondSummary],
    y: impl Fn(&SecondSummary) -> Y,
    color: RGBColor,
) -> Vec<Circle<(u64, Y), i32>> {
    timeline
        .iter()
        .map(|s| Circle::new((s.second, y(s)), 3, color.filled()))
        .collect()
}

/// Without a font, plotters cannot draw a mesh (it labels it): a frame and four
/// horizontal lines instead.
fn grid<Y: Copy + 'static>(
    seconds: u64,
    top: f64,
    y: impl Fn(f64) -> Y,
) -> Vec<PathElement<(u64, Y)>> {
    let mut lines: Vec<PathElement<(u64, Y)>> = (0..=4)
        .map(|i| {
            let level = y(top * f64::from(i) / 4.0);
            PathElement::new(vec![(0, level), (seconds, level)], BLACK.mix(0.2))
        })
        .collect();
    lines.push(PathElement::new(vec![(0, y(0.0)), (0, y(top))], BLACK));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeline() -> Vec<SecondSummary> {
        (0..5)
            .map(|i| SecondSummary {
                second: i,
                completed: 100 * i,
                errors: i % 2,
                // Second 2 had no answers (a stall).
                p50_ms: (i != 2).then_some(1.0 + i as f64),
                p99_ms: (i != 2).then_some(5.0 + i as f64),
            })
            .collect()
    }

    #[test]
    fn without_a_font_the_chart_is_drawn_without_text() {
        let dir = std::env::temp_dir().join(format!("loadtest-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("chart.png");
        draw_with(&path, "t", &timeline(), false).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
