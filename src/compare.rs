//! Comparing a computed tensor with the values it should hold, for tests and in-browser checks.
//!
//! `f32::max` ignores NaN and `zip` stops at the shorter slice, so a naive "largest
//! difference" lets an all-NaN or truncated output pass. This comparison counts a non-finite
//! value as an infinite error and refuses slices of different lengths.

/// The worst element of a comparison: where it is, how far off, and both values there.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Worst {
    /// Index of the largest error (the first one, on ties; 0 for empty slices).
    pub at: usize,
    /// |got - want| there; `f32::INFINITY` where either value is NaN or infinite.
    pub error: f32,
    /// The computed value there (0 for empty slices).
    pub got: f32,
    /// The expected value there (0 for empty slices).
    pub want: f32,
}

/// The largest |got\[i\] - want\[i\]|, or a message when the lengths differ.
///
/// A NaN or an infinity in either slice is an infinite error (the first one found is
/// reported), so the result can be compared with a bar and never is NaN itself.
pub fn max_abs_diff(got: &[f32], want: &[f32]) -> Result<Worst, String> {
    if got.len() != want.len() {
        return Err(format!(
            "{} values where {} were expected",
            got.len(),
            want.len()
        ));
    }
    let mut worst = Worst {
        at: 0,
        error: 0.0,
        got: got.first().copied().unwrap_or(0.0),
        want: want.first().copied().unwrap_or(0.0),
    };
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let error = if g.is_finite() && w.is_finite() {
            (g - w).abs()
        } else {
            f32::INFINITY
        };
        if error > worst.error {
            worst = Worst {
                at: i,
                error,
                got: g,
                want: w,
            };
            if error == f32::INFINITY {
                break;
            }
        }
    }
    Ok(worst)
}

/// The largest |x| over finite values, at least `floor`: the scale of a relative bar.
pub fn max_abs(values: &[f32], floor: f32) -> f32 {
    values
        .iter()
        .filter(|x| x.is_finite())
        .fold(floor, |m, x| m.max(x.abs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_slices_have_no_error() {
        let w = max_abs_diff(&[1.0, -2.0], &[1.0, -2.0]).unwrap();
        assert_eq!(w.error, 0.0);
        assert_eq!(max_abs_diff(&[], &[]).unwrap().error, 0.0);
    }

    #[test]
    fn the_largest_difference_and_its_place_are_reported() {
        let w = max_abs_diff(&[1.0, 2.5, 3.0], &[1.0, 2.0, 3.25]).unwrap();
        assert_eq!((w.at, w.error, w.got, w.want), (1, 0.5, 2.5, 2.0));
    }

    #[test]
    fn nan_and_infinity_are_infinite_errors() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let w = max_abs_diff(&[0.0, bad, 0.0], &[0.0, 0.0, 0.0]).unwrap();
            assert_eq!((w.at, w.error), (1, f32::INFINITY), "{bad}");
            // an expected value that is not finite cannot be met either
            let w = max_abs_diff(&[0.0], &[bad]).unwrap();
            assert_eq!(w.error, f32::INFINITY, "{bad}");
        }
        let all_nan = vec![f32::NAN; 8];
        let w = max_abs_diff(&all_nan, &[1.0; 8]).unwrap();
        assert_eq!((w.at, w.error), (0, f32::INFINITY));
    }

    #[test]
    fn different_lengths_are_refused() {
        let err = max_abs_diff(&[1.0], &[1.0, 2.0]).unwrap_err();
        assert!(err.contains("1 values where 2"), "{err}");
        assert!(max_abs_diff(&[], &[1.0]).is_err());
    }

    #[test]
    fn the_scale_ignores_non_finite_values() {
        assert_eq!(max_abs(&[f32::NAN, -3.0, f32::INFINITY], 1.0), 3.0);
        assert_eq!(max_abs(&[0.5], 1.0), 1.0);
    }
}
