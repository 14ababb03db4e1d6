//! `qlora plot OUT`: the curves of a run from its `metrics.jsonl` as an SVG (plotters): the
//! training loss with the evaluation loss, the learning rate, multiple-choice accuracy when
//! the run measured it, and a preference run's rewards and reward accuracy. `train` draws them
//! when it finishes.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use plotters::prelude::*;
use qlora_core::train::METRICS_FILE;

pub const CURVES_FILE: &str = "training_curves.svg";

#[derive(Args)]
pub struct PlotArgs {
    /// A training run's output directory (with metrics.jsonl).
    run: PathBuf,
    /// Where to write the SVG [default: RUN/training_curves.svg].
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The series of a run: (step, value) pairs for each metric it logged.
#[derive(Default)]
struct Series {
    loss: Vec<(f64, f64)>,
    eval_loss: Vec<(f64, f64)>,
    lr: Vec<(f64, f64)>,
    mc_acc: Vec<(f64, f64)>,
    mc_acc_norm: Vec<(f64, f64)>,
    rewards_chosen: Vec<(f64, f64)>,
    rewards_rejected: Vec<(f64, f64)>,
    rewards_margins: Vec<(f64, f64)>,
    accuracies: Vec<(f64, f64)>,
    eval_accuracies: Vec<(f64, f64)>,
}

fn read_series(path: &Path) -> Result<Series> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut series = Series::default();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))?;
        let Some(step) = v["step"].as_f64() else {
            bail!("{}:{}: no `step`", path.display(), i + 1);
        };
        for (key, out) in [
            ("loss", &mut series.loss),
            ("eval_loss", &mut series.eval_loss),
            ("lr", &mut series.lr),
            ("mc_acc", &mut series.mc_acc),
            ("mc_acc_norm", &mut series.mc_acc_norm),
            ("rewards/chosen", &mut series.rewards_chosen),
            ("rewards/rejected", &mut series.rewards_rejected),
            ("rewards/margins", &mut series.rewards_margins),
            ("rewards/accuracies", &mut series.accuracies),
            ("eval_rewards/accuracies", &mut series.eval_accuracies),
        ] {
            if let Some(value) = v[key].as_f64().filter(|x| x.is_finite()) {
                out.push((step, value));
            }
        }
    }
    if series.loss.is_empty() {
        bail!("{}: no steps logged yet", path.display());
    }
    Ok(series)
}

/// The range of `values` with a little room, never empty.
fn span(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    let pad = ((hi - lo) * 0.05).max(hi.abs() * 1e-3).max(1e-9);
    (lo - pad)..(hi + pad)
}

type Panel<'a, 'b> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// A named series and its color.
type Line<'a> = (&'a str, &'a [(f64, f64)], RGBColor);

fn panel(
    area: &Panel<'_, '_>,
    title: &str,
    steps: std::ops::Range<f64>,
    y: Option<std::ops::Range<f64>>,
    lines: &[Line<'_>],
) -> Result<()> {
    let y = y.unwrap_or_else(|| {
        span(
            lines
                .iter()
                .flat_map(|(_, points, _)| points.iter().map(|p| p.1)),
        )
    });
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(64)
        .build_cartesian_2d(steps, y)
        .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .draw()
        .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    for (name, points, color) in lines {
        let color = *color;
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| anyhow::anyhow!("plot: {e}"))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        if points.len() < 40 {
            chart
                .draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))
                .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    Ok(())
}

/// Draw the curves of the run in `run` into `out` (default `run/training_curves.svg`).
pub fn draw(run: &Path, out: Option<&Path>) -> Result<PathBuf> {
    let series = read_series(&run.join(METRICS_FILE))?;
    let out = out.map_or_else(|| run.join(CURVES_FILE), Path::to_path_buf);
    let steps = span(series.loss.iter().map(|p| p.0));
    let mut losses: Vec<Line<'_>> = vec![("loss", &series.loss, RGBColor(31, 119, 180))];
    if !series.eval_loss.is_empty() {
        losses.push(("eval loss", &series.eval_loss, RGBColor(214, 39, 40)));
    }
    // Title, a fixed y range (shares: 0..1, so a flat line does not fill the panel), lines.
    type Spec<'a> = (&'a str, Option<std::ops::Range<f64>>, Vec<Line<'a>>);
    let mut panels: Vec<Spec<'_>> = vec![
        ("loss", None, losses),
        (
            "learning rate",
            None,
            vec![("learning rate", &series.lr, RGBColor(44, 160, 44))],
        ),
    ];
    if !series.mc_acc.is_empty() {
        panels.push((
            "multiple-choice accuracy",
            Some(-0.02..1.02),
            vec![
                ("acc", &series.mc_acc, RGBColor(148, 103, 189)),
                ("acc_norm", &series.mc_acc_norm, RGBColor(255, 127, 14)),
            ],
        ));
    }
    if !series.rewards_chosen.is_empty() {
        panels.push((
            "rewards",
            None,
            vec![
                ("chosen", &series.rewards_chosen, RGBColor(44, 160, 44)),
                ("rejected", &series.rewards_rejected, RGBColor(214, 39, 40)),
                ("margin", &series.rewards_margins, RGBColor(31, 119, 180)),
            ],
        ));
        let mut accuracy: Vec<Line<'_>> =
            vec![("train", &series.accuracies, RGBColor(31, 119, 180))];
        if !series.eval_accuracies.is_empty() {
            accuracy.push(("eval", &series.eval_accuracies, RGBColor(214, 39, 40)));
        }
        panels.push(("reward accuracy", Some(-0.02..1.02), accuracy));
    }
    {
        let root = SVGBackend::new(&out, (960, 320 * panels.len() as u32)).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
        let areas = root.split_evenly((panels.len(), 1));
        for (area, (title, y, lines)) in areas.iter().zip(&panels) {
            panel(area, title, steps.clone(), y.clone(), lines)?;
        }
        root.present()
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    Ok(out)
}

pub fn run(args: PlotArgs) -> Result<()> {
    let out = draw(&args.run, args.out.as_deref())?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
