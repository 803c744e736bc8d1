//! The sweep's series (one kernel and layout, its sizes smallest first) and the budget that
//! decides when a series stops growing.

use multipole::Layout;

/// One kernel's sizes, smallest first, and how its time grows from one size to the next.
pub struct Series {
    pub kernel: &'static str,
    pub image: bool,
    /// n for sequences, the side for (square) images.
    pub sizes: Vec<usize>,
    /// Expected time ratio between consecutive sizes (n grows 4x: n log n or n^2), rounded up.
    pub growth: f64,
    /// Set once the series stops growing: why.
    pub stopped: Option<String>,
    /// Seconds the last measurement took (plan, inputs, warm-up and runs).
    pub last: Option<(usize, f64)>,
}

impl Series {
    /// FMA (f32, and f16 storage where the adapter has it), its backward and dense, for
    /// sequences then images: FMA to n = 1M (4^5 x 1024), dense to 64K; with --quick FMA to
    /// 4096 and dense at 1024.
    pub fn all(quick: bool, f16: bool) -> Vec<Series> {
        let (fma_max, dense_max) = if quick { (1, 0) } else { (5, 3) };
        let steps = |last: usize| (0..=last).collect::<Vec<usize>>();
        [
            ("fma", false, fma_max, 5.0),
            ("fma_f16", false, fma_max, 5.0),
            ("fma_backward", false, fma_max, 5.0),
            ("dense", false, dense_max, 16.0),
            ("fma", true, fma_max, 5.0),
            ("fma_f16", true, fma_max, 5.0),
            ("fma_backward", true, fma_max, 5.0),
            ("dense", true, dense_max, 16.0),
        ]
        .into_iter()
        .filter(|&(kernel, ..)| f16 || kernel != "fma_f16")
        .map(|(kernel, image, last, growth)| Series {
            kernel,
            image,
            // 1D: n = 1K, 4K, .., 1M; 2D: sides 32, 64, .., 1024 (the same n).
            sizes: steps(last)
                .into_iter()
                .map(|i| if image { 32 << i } else { 1024 << (2 * i) })
                .collect(),
            growth,
            stopped: None,
            last: None,
        })
        .collect()
    }

    /// The tokens and layout of one of its sizes.
    pub fn input(&self, size: usize) -> (usize, Layout) {
        if self.image {
            (
                size * size,
                Layout::Image {
                    height: size,
                    width: size,
                },
            )
        } else {
            (size, Layout::Sequence)
        }
    }

    /// The layout as records name it.
    pub fn layout_name(&self, size: usize) -> String {
        if self.image {
            format!("2d {size}x{size}")
        } else {
            "1d".into()
        }
    }

    /// FMA's m and p: sequences m = 32, p = 4; images m = 4, p = 4.
    pub fn m_p(&self) -> (usize, usize) {
        if self.image { (4, 4) } else { (32, 4) }
    }
}

/// What a series may still spend.
pub struct Budget {
    /// The whole report's seconds.
    pub total: f64,
    /// Seconds left (less what writing the files needs).
    pub left: f64,
    /// Series still growing, among which `left` is shared.
    pub active: usize,
    /// Seconds one measurement may take at most.
    pub step_cap: f64,
}

impl Budget {
    /// Why a series whose last measurement (n, seconds) was `last` must not measure `n`
    /// next, if it must not: that one took too long, the next one (predicted as `growth`
    /// times longer) would not fit in the series' share of what is left, or nothing is left.
    pub fn stop(&self, last: Option<(usize, f64)>, growth: f64, n: usize) -> Option<String> {
        let share = self.left / self.active.max(1) as f64;
        match last {
            Some((prev, secs)) if secs > self.step_cap => Some(format!(
                "n = {prev} took {secs:.1} s, more than the {:.0} s a size may take",
                self.step_cap
            )),
            Some((prev, secs)) if secs * growth > share => Some(format!(
                "n = {prev} took {secs:.1} s; n = {n} would take about {:.0} s ({growth}x), more than its share ({:.0} s) of the {:.0} s left of the {:.0} s budget",
                secs * growth,
                share.max(0.0),
                self.left.max(0.0),
                self.total
            )),
            None if self.left <= 0.0 => Some(format!("the {:.0} s budget is spent", self.total)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_stops_a_series_that_would_not_fit() {
        let b = Budget {
            total: 420.0,
            left: 300.0,
            active: 3,
            step_cap: 84.0,
        };
        // The first size runs while anything is left; 10 s x 5 = 50 s fits a 100 s share.
        assert_eq!(b.stop(None, 5.0, 1024), None);
        assert_eq!(b.stop(Some((1024, 10.0)), 5.0, 4096), None);
        // 10 s x 16 = 160 s does not.
        let why = b.stop(Some((1024, 10.0)), 16.0, 4096).unwrap();
        assert!(
            why.contains("would take about 160 s") && why.contains("share (100 s)"),
            "{why}"
        );
        // A size over the cap stops the series whatever is left.
        let why = b.stop(Some((1024, 90.0)), 1.0, 4096).unwrap();
        assert!(why.contains("more than the 84 s a size may take"), "{why}");
        let spent = Budget { left: -1.0, ..b };
        assert!(
            spent
                .stop(None, 5.0, 1024)
                .unwrap()
                .contains("budget is spent")
        );
    }
}
