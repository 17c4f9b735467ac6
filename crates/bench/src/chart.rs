//! PNG charts with plotters' bitmap backend. Text is drawn with ab_glyph and
//! the DejaVu Sans font embedded in the binary (the `dejavu` crate), so the
//! charts need no system fonts and no network.

use plotters::prelude::*;
use plotters::style::FontStyle;
use std::path::Path;
use std::sync::Once;

static FONT: Once = Once::new();

fn fonts() {
    FONT.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
        let _ = plotters::style::register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold());
    });
}

const COLORS: [RGBColor; 8] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x7f, 0x7f, 0x7f),
    // Centrifugo (d, f).
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
];

pub fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

fn human(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Horizontal bars, one per (label, value, color index), value printed at the end.
pub fn bars(path: &Path, title: &str, unit: &str, bars: &[(String, f64, usize)]) -> anyhow::Result<()> {
    fonts();
    let height = 120 + 46 * bars.len() as u32;
    let root = BitMapBackend::new(path, (1000, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = bars.iter().map(|b| b.1).fold(0.0, f64::max).max(1e-9) * 1.25;
    let n = bars.len() as i32;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(330)
        .build_cartesian_2d(0.0..max, (0..n - 1).into_segmented())?;
    let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc(unit)
        .x_label_formatter(&|v| human(*v))
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get((n - 1 - *i) as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .y_labels(bars.len())
        .label_style(("sans-serif", 16))
        .draw()?;
    for (i, (_, v, c)) in bars.iter().enumerate() {
        let row = n - 1 - i as i32;
        let style = color(*c).filled();
        chart.draw_series(std::iter::once(Rectangle::new(
            [(0.0, SegmentValue::Exact(row)), (*v, SegmentValue::Exact(row + 1))],
            style,
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            human(*v),
            (*v + max * 0.01, SegmentValue::CenterOf(row)),
            ("sans-serif", 16).into_font(),
        )))?;
    }
    root.present()?;
    Ok(())
}

/// One line of a chart: name, points, color index.
pub type Series = (String, Vec<(f64, f64)>, usize);

/// Lines: (name, points, color index); optional log scale on y.
pub fn lines(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
    log_y: bool,
    x_fmt: Option<&dyn Fn(f64) -> String>,
) -> anyhow::Result<()> {
    fonts();
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let pts = series.iter().flat_map(|s| s.1.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in pts {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y0 = y0.min(*y);
        y1 = y1.max(*y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1e-9 {
        x1 = x0 + 1.0;
    }
    let mut builder = ChartBuilder::on(&root);
    builder.caption(title, ("sans-serif", 24)).margin(15).x_label_area_size(45).y_label_area_size(80);
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(x_desc)
                .y_desc(y_desc)
                .x_label_formatter(&|v| x_fmt.map_or_else(|| human(*v), |f| f(*v)))
                .y_label_formatter(&|v| human(*v))
                .label_style(("sans-serif", 15))
                .draw()?;
            for (name, points, c) in series {
                let col = color(*c);
                chart
                    .draw_series(LineSeries::new(points.iter().copied(), col.stroke_width(3)))?
                    .label(name.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(3)));
                chart.draw_series(points.iter().map(|p| Circle::new(*p, 4, col.filled())))?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .label_font(("sans-serif", 16))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()?;
        }};
    }
    if log_y {
        let lo = (y0.max(1e-3)) / 1.5;
        let hi = y1.max(lo * 10.0) * 1.5;
        draw!(builder.build_cartesian_2d(x0..x1, (lo..hi).log_scale())?);
    } else {
        draw!(builder.build_cartesian_2d(x0..x1, 0.0..(y1.max(1e-9) * 1.15))?);
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_text_without_system_fonts() {
        let dir = std::env::temp_dir().join(format!("moonx-bench-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("bars.png");
        bars(&p, "title", "events/s", &[("a".into(), 1.0e6, 0), ("b".into(), 2.5e5, 1)]).unwrap();
        assert!(std::fs::metadata(&p).unwrap().len() > 1000);
        let q = dir.join("lines.png");
        lines(&q, "t", "x", "y", &[("s".into(), vec![(1.0, 1.0), (2.0, 4.0)], 0)], true, None).unwrap();
        assert!(std::fs::metadata(&q).unwrap().len() > 1000);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
